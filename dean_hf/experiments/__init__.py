"""The paper's experiments as library functions; scripts in `examples/` and `benchmarks/` call them."""

from .common import (change_text, compare_rows, corrected_text, measure, rate_text, restrict, unclear_text,
                     wilson_interval)
from .demo import before_after, embedded, embedded_questions, run_demo
from .robustness import dean_setting, robustness
from .sft import finetune_variants, lora_finetune, mix
from .sweep import sweep

__all__ = ["before_after", "dean_setting", "embedded", "embedded_questions", "finetune_variants", "lora_finetune",
           "change_text", "compare_rows", "corrected_text", "measure", "mix", "rate_text", "restrict", "robustness",
           "run_demo", "sweep", "unclear_text", "wilson_interval"]
