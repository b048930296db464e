"""The memory plan: from a config alone, within 15 % of the measured peak on models built here, and sane for the
shipped 7B/70B configs."""

from pathlib import Path

import pytest
import torch

from dean_hf import DeanError, score_importance
from dean_hf.cli import main
from dean_hf.plan import GIB, estimate_memory, measure_peak

CONFIGS = Path(__file__).parent / "fixtures" / "configs"


def small_llama():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=8000, max_position_embeddings=512, tie_word_embeddings=False)


@pytest.mark.parametrize("dtype,batch,length", [("float32", 2, 128), ("bfloat16", 1, 256), ("float32", 4, 64)])
def test_plan_within_15_percent_of_the_measured_peak(dtype, batch, length):
    from transformers import AutoModelForCausalLM

    config = small_llama()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    half = length // 2
    examples = [{"input_ids": list(range(3, 3 + length)), "labels": [-100] * half + list(range(3 + half, 3 + length))}
                for _ in range(batch)]
    plan = estimate_memory(config, dtype=dtype, batch_size=batch, max_length=length, response_tokens=length - half)
    _, measured = measure_peak(lambda: score_importance(model, examples, batch_size=batch, show_progress=False))
    assert 0.85 <= plan.total("scoring_peak") / measured <= 1.15, (plan.to_text(), measured / 2**20)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert plan.total("weights") == params  # exact: counted on the meta model
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                 and n != "lm_head")
    assert plan.total("accumulators") == 4 * linear


def test_plans_of_the_shipped_configs():
    llama2 = estimate_memory(CONFIGS / "llama-2-7b.json")
    assert abs(llama2.num_parameters - 6.74e9) < 0.01e9
    assert abs(llama2.total("weights") / GIB - 12.55) < 0.01 and abs(llama2.total("accumulators") / GIB - 24.12) < 0.01
    qwen = estimate_memory(CONFIGS / "qwen2-7b.json", max_memory={0: "80GiB"})
    assert set(qwen.scoring_peak) == {"0"} and qwen.scoring_peak["0"] < 80 * GIB and qwen.layers_per_pass is None

    big = estimate_memory(CONFIGS / "llama-3-70b.json", max_memory={0: "80GiB", 1: "80GiB", 2: "80GiB", 3: "80GiB",
                                                                  "cpu": "400GiB"})
    assert abs(big.num_parameters - 70.55e9) < 0.05e9
    gpus = [d for d in big.scoring_peak if d != "cpu"]
    assert len(gpus) == 4 and all(big.scoring_peak[d] <= 80 * GIB for d in gpus)  # room kept for scoring
    assert big.activations["cpu"] == 0  # offloaded layers compute on the first GPU
    alone = estimate_memory(CONFIGS / "llama-3-70b.json", max_memory={0: "80GiB", "cpu": "150GiB"})
    assert alone.layers_per_pass is not None and alone.layers_per_pass >= 1  # one set does not fit: split


def test_dean_plan_command(capsys, tmp_path):
    assert main(["plan", str(CONFIGS / "llama-2-7b.json"), "--max-memory", "0=80GiB", "--json",
                 str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "Memory plan for meta-llama/Llama-2-7b-hf" in out and "scoring peak" in out and "device_map" in out
    assert (tmp_path / "plan.json").is_file()
    assert main(["plan", str(CONFIGS / "llama-2-7b.json"), "--max-memory", "0:80GiB"]) == 2
    assert main(["plan", str(tmp_path / "absent.json")]) == 2
    with pytest.raises(DeanError, match="batch_size"):
        estimate_memory(CONFIGS / "llama-2-7b.json", batch_size=0)


def test_layers_per_pass_from_the_plan():
    from dean_hf.plan import layers_that_fit

    plan = estimate_memory(CONFIGS / "llama-2-7b.json", batch_size=1, max_length=512)
    rest = plan.total("activations") + max(plan.transient.values())
    assert layers_that_fit(plan, plan.total("accumulators") + rest, 32) is None  # everything fits: one pass
    half = layers_that_fit(plan, plan.total("accumulators") / 2 + rest, 32)
    assert half == 16
    with pytest.raises(DeanError, match="even one decoder layer"):
        layers_that_fit(plan, rest, 32)
    model = __import__("conftest").make_model("llama")
    from dean_hf.plan import auto_layers_per_pass

    assert auto_layers_per_pass(model, batch_size=1, max_length=16, response_tokens=8) is None  # CPU: one pass
