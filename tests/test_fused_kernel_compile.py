"""The fused kernel compiled for real GPUs, without one (scoring/fused_abs_grad_aot.py).

Triton's interpreter (test_fused_kernel.py) checks what the kernel computes, not whether a GPU can run it well:
these compile it for each architecture `fused_kernel="auto"` takes it on and read the machine code's resources.
A tile or a change that spilled registers, needed more shared memory than a block may have, or lost the tensor
cores would fail here. The compile needs a process without TRITON_INTERPRET (conftest sets it for the interpreter
tests), so it runs in a subprocess: about 20 s for all of them."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
              pytest.mark.floors]  # with the gpu extra's floor triton too (make test-floors)

# Shared memory a block may use (bytes, opt-in maximum) per compute capability: CUDA C Programming Guide, "Technical
# Specifications per Compute Capability".
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}
TENSOR_CORES = {80: "mma", 86: "mma", 89: "mma", 90: "wgmma", 100: "tcgen05", 120: "mma"}
VARIANTS = [(cap, dtype, True) for cap in SHARED_LIMIT for dtype in ("bfloat16", "float32")]
VARIANTS += [(90, "float16", True), (90, "bfloat16", False), (80, "bfloat16", False)]

SCRIPT = """
import dataclasses, json, sys, torch
from dean_hf.scoring.fused_abs_grad_aot import compile_for
out = [dataclasses.asdict(compile_for(cap, getattr(torch, dtype), ragged=ragged)) for cap, dtype, ragged in
       json.loads(sys.argv[1])]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(VARIANTS)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return {(r["capability"], r["dtype"], r["ragged"]): r for r in json.loads(run.stdout.splitlines()[-1])}


@pytest.mark.parametrize("capability,dtype,ragged", VARIANTS)
def test_the_kernel_compiles_without_spills_within_shared_memory(compiled, capability, dtype, ragged):
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype]
    r = compiled[(capability, short, ragged)]
    assert r["spill_bytes"] == 0, r  # registers spilled to local memory: the tile is too large for the registers
    assert 0 < r["shared_bytes"] <= SHARED_LIMIT[capability], r
    if dtype == "float32":
        assert r["products"] == "none"  # IEEE fp32 products on the FMA units: never tf32
    else:
        assert r["products"] == TENSOR_CORES[capability], r  # 16-bit products on the tensor cores


def test_compiling_under_the_interpreter_is_refused(monkeypatch):
    import torch

    from dean_hf import DeanError
    from dean_hf.scoring.fused_abs_grad_aot import compile_for

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(DeanError, match="without TRITON_INTERPRET"):
        compile_for(90, torch.bfloat16)
