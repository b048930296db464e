"""The memory plan: from a config alone, within 15 % of the measured peak on models built here, and sane for the
shipped 7B/70B configs."""

import ast
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from dean_hf import DeanError, score_importance
from dean_hf.cli import main
from dean_hf.plan import GIB, estimate_memory, load_config, measure_peak, meta_model

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
    gpus = [d for d in big.scoring_peak if d not in ("cpu", "disk")]
    assert len(gpus) == 4 and all(big.scoring_peak[d] <= 80 * GIB for d in gpus)  # room kept for scoring
    alone = estimate_memory(CONFIGS / "llama-3-70b.json", max_memory={0: "80GiB", "cpu": "150GiB"})
    assert alone.layers_per_pass is not None and alone.layers_per_pass >= 1  # one set does not fit: split
    assert alone.activations.get("cpu", 0) == 0  # offloaded layers compute on the GPU


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


# The devices the plan must get right: one 24, 80 or 141 GiB GPU, and four 80 GiB GPUs.
SETUPS = {"1x24": {0: "24GiB"}, "1x80": {0: "80GiB"}, "1x141": {0: "141GiB"},
          "4x80": {0: "80GiB", 1: "80GiB", 2: "80GiB", 3: "80GiB"}}
MIB = 2 ** 20


def _owner(name, device_map):
    """The device accelerate's device_map gives a parameter or module (the longest matching prefix)."""
    best = max((p for p in device_map if p == "" or name == p or name.startswith(p + ".")), key=len)
    return str(device_map[best])


def _independent_peaks(meta, plan, k):
    """Per device, from the device_map alone: the weights placed there, plus the accumulators (4 bytes per weight
    of each scored Linear, kept on its device, or in CPU RAM when offloaded) of the fullest pass of k layers (None:
    all), plus the plan's activations and temporaries there."""
    weights = defaultdict(int)
    for name, p in meta.named_parameters():
        weights[_owner(name, plan.device_map)] += p.numel() * p.element_size()
    by_layer = defaultdict(lambda: defaultdict(int))
    for name, module in meta.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            dev = _owner(name, plan.device_map)
            layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
            by_layer[layer]["cpu" if dev in ("cpu", "disk") else dev] += 4 * module.weight.numel()
    layers = sorted(by_layer)
    chunks = [layers] if k is None else [layers[i:i + k] for i in range(0, len(layers), k)]
    most = defaultdict(int)
    for chunk in chunks:
        held = defaultdict(int)
        for layer in chunk:
            for dev, n in by_layer[layer].items():
                held[dev] += n
        for dev, n in held.items():
            most[dev] = max(most[dev], n)
    devices = set(weights) | set(most)
    return {d: weights[d] + most[d] + plan.activations.get(d, 0) + plan.transient.get(d, 0) for d in devices}


@pytest.mark.parametrize("name", ["llama-2-7b", "qwen2-7b", "llama-3-70b"])
def test_the_plan_places_as_accelerate_does_and_its_passes_fit(name):
    """One placement model: the device_map shown is accelerate's infer_auto_device_map for the printed
    max_memory (and what from_pretrained(device_map='auto') makes of it), and layers_per_pass is the largest
    number of layers whose accumulators fit on every device of that map, with no line contradicting another."""
    from accelerate import infer_auto_device_map

    config = load_config(CONFIGS / f"{name}.json")
    meta = meta_model(config, torch.bfloat16)
    no_split = list(meta._no_split_modules)
    for setup, max_memory in SETUPS.items():
        plan = estimate_memory(config, max_memory=max_memory)
        text = plan.to_text()
        limits = {str(k): int(v[:-3]) * GIB for k, v in max_memory.items()}
        if plan.device_map is None:  # nothing to load: it says so, and advises no placement or passes
            assert "does not fit" in text and "load with" not in text and "layers_per_pass=" not in text, text
            continue
        printed = ast.literal_eval(re.search(r"max_memory=(\{.*?\})\)", text).group(1))
        assert infer_auto_device_map(meta, max_memory=printed, no_split_module_classes=no_split) == plan.device_map
        try:
            from transformers.integrations.accelerate import _get_device_map
        except ImportError:  # older transformers: from_pretrained called accelerate's functions directly
            _get_device_map = None
        if _get_device_map is not None:
            assert _get_device_map(meta, "auto", dict(printed), None) == plan.device_map, setup
        k = plan.layers_per_pass
        peaks = _independent_peaks(meta, plan, k)
        assert all(peaks.get(d, 0) <= limit for d, limit in limits.items()), (setup, text)
        layers = config.num_hidden_layers
        if k is not None:  # the largest k that fits: one more layer per pass would not
            assert 1 <= k < layers
            bigger = _independent_peaks(meta, plan, k + 1)
            assert any(bigger.get(d, 0) > limit for d, limit in limits.items()), (setup, text)
            assert f"layers_per_pass={k} " in text and "one pass" not in text
        else:
            assert "score in one pass" in text
        assert "not even one" not in text and "Even one" not in text
        assert text.count("layers_per_pass=") - text.count("layers_per_pass='auto'") == 1
        for dev, limit in limits.items():  # the table's scoring peak is the fullest pass, within the device
            assert plan.scoring_peak.get(dev, 0) == peaks.get(dev, 0) <= limit, (setup, dev)


def test_without_max_memory_the_plan_names_the_smallest_gpu_and_what_to_do_below():
    config = load_config(CONFIGS / "llama-2-7b.json")
    plan = estimate_memory(config)
    text = plan.to_text()
    one = plan.total("scoring_peak")
    up = math.ceil(one / GIB * 10) / 10  # sizes to have are rounded up
    assert f"One GPU of {up:.1f} GiB or more scores it in one pass (the smallest common size: 48 GiB)" in text
    least = float(re.search(r"From ([0-9.]+) GiB, score a few layers per pass", text).group(1)) * GIB
    assert f"Below {least / GIB:.1f} GiB, offload weights" in text
    # The figures are the placement's: at the one-pass size one pass, just below it several; at the least
    # size layers per pass with every weight on the GPU, just below it weights offloaded.
    at = estimate_memory(config, max_memory={0: f"{round(up * 1024)}MiB"})
    assert at.layers_per_pass is None and set(map(str, at.device_map.values())) == {"0"}
    below = estimate_memory(config, max_memory={0: f"{int(one / MIB) - 64}MiB"})
    assert below.layers_per_pass is not None
    least_at = estimate_memory(config, max_memory={0: f"{round(least / MIB)}MiB"})
    assert least_at.layers_per_pass >= 1 and set(map(str, least_at.device_map.values())) == {"0"}
    under = estimate_memory(config, max_memory={0: f"{int(least / MIB) - 256}MiB"})
    assert under.device_map is None or set(map(str, under.device_map.values())) != {"0"}


@pytest.mark.parametrize("change,named", [({"hidden_size": "big"}, "hidden_size"),
                                          ({"hidden_size": -4096}, "hidden_size"), ({"vocab_size": 0}, "vocab_size"),
                                          ({"model_type": "nosuchmodel"}, "nosuchmodel")])
def test_dean_plan_on_a_bad_config_is_one_line(change, named, tmp_path, capsys):
    data = json.loads((CONFIGS / "llama-2-7b.json").read_text())
    data.update(change)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400 and named in err, err


def test_dean_plan_on_a_huge_max_memory_is_one_line(capsys):
    for value in ("0=" + "9" * 5000 + "GiB", "0=" + "9" * 5000, "9" * 5000 + "=80GiB", "0=0GiB", "cpu=80GiB"):
        assert main(["plan", str(CONFIGS / "llama-2-7b.json"), "--max-memory", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and len(err) < 400, err
