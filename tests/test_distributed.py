"""Data-parallel scoring (2 CPU processes, gloo), device_map splits, and the low-memory path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanError, ImportanceScores, score_importance


def max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max()).item() for n in b)


def test_two_process_scoring_equals_single_process(tmp_path):
    out = tmp_path / "dist.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29533", str(Path(__file__).parent / "dist_score.py"), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = ImportanceScores.load(out)
    single = score_importance(make_model("llama"), random_examples(7), batch_size=2, show_progress=False)
    assert max_rel(distributed, single) < 1e-5
    assert distributed.metadata["num_tokens"] == single.metadata["num_tokens"]
    assert distributed.metadata["data_fingerprint"] == single.metadata["data_fingerprint"]


def test_distributed_true_without_process_group():
    with pytest.raises(DeanError, match="torchrun"):
        score_importance(make_model("llama"), random_examples(1), distributed=True, show_progress=False)


def test_device_map_split_on_cpu():
    from accelerate import dispatch_model

    examples = random_examples(4)
    reference = score_importance(make_model("llama"), examples, show_progress=False)
    model = make_model("llama")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(model, device_map=device_map)
    split = score_importance(model, examples, show_progress=False)
    assert max_rel(split, reference) < 1e-5
    assert all(split[n].device == dict(model.named_modules())[n].weight.device for n in split)


def test_modules_per_pass_equals_one_pass():
    model = make_model("gpt2")
    examples = random_examples(4)
    one = score_importance(model, examples, batch_size=2, show_progress=False)
    grouped = score_importance(model, examples, batch_size=2, modules_per_pass=3, show_progress=False)
    assert list(grouped) == list(one) and max_rel(grouped, one) < 1e-6
    with pytest.raises(DeanError, match="modules_per_pass"):
        score_importance(model, examples, modules_per_pass=0)


def test_nonfinite_gradient_names_module_and_samples():
    model = make_model("llama")
    target = model.model.layers[1].mlp.down_proj

    def poison(module, args, output):
        output.register_hook(lambda g: g * float("inf"))

    handle = target.register_forward_hook(poison)
    try:
        with pytest.raises(DeanError, match=r"non-finite gradient at module '.*' while scoring sample\(s\) \[\d"):
            score_importance(model, random_examples(2), show_progress=False)
    finally:
        handle.remove()
    assert all(not m._forward_hooks for m in model.modules())
