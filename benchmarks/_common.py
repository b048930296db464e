"""Shared setup of the benchmarks: the model and the scoring examples."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "dean_reference"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def load(quick: bool, model_name: str = "default"):
    """(model, tokenizer) — a tiny random Llama with a byte tokenizer in quick mode, else `model_name`."""
    from dean_hf.models import load_model, load_tokenizer

    if not quick:
        return load_model(model_name, dtype="float32"), load_tokenizer(model_name)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import CORPUS, make_model  # the test suite's tiny model
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from conftest import CHAT_TEMPLATE, VOCAB

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=VOCAB, min_frequency=1,
                            special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return make_model("llama"), tok


def data_source(name: str):
    """The reference CSV for `name` when present, else the embedded set."""
    from dean_hf.experiments import embedded

    files = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
             "general": "alpaca_cleaned_no_safety_train_1k.csv"}
    path = REFERENCE / files[name]
    return path if path.is_file() else embedded(name)


def examples(tokenizer, name: str, n: int, max_length: int = 256):
    from dean_hf.data import build_examples, load_records

    return build_examples(load_records(data_source(name), n=n, seed=0), tokenizer, max_length=max_length)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def fmt(x: float) -> str:
    return f"{x:.2f}"


torch.set_num_threads(max(1, torch.get_num_threads()))
