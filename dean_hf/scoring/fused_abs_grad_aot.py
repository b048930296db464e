"""The fused kernel compiled for a CUDA GPU on a machine without one: its registers, spills and shared memory.

Triton compiles for any target it knows (`GPUTarget("cuda", capability, 32)`), and its Linux wheel ships `ptxas`
and `cuobjdump`, so the machine code that a GPU would run, and what it costs per thread, can be read anywhere.
This is how the tile shapes of `fused_abs_grad.py` were chosen without a GPU, and how `MIN_CAPABILITY` was found;
tests/test_fused_kernel_compile.py keeps it so (a kernel that spills registers or needs more shared memory than a
block may have would be slow or fail to launch, which Triton's interpreter cannot show).

The signature is specialised as Triton's JIT specialises a launch on the hooks' tensors: contiguous features
(stride 1: `accumulate_abs_grad` makes them so), and pointers, sizes and token strides divisible by 16, as they are
for 7B-class models.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import DeanError
from . import fused_abs_grad

_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_UNIT_STRIDES = ("stride_am", "stride_bn", "stride_cn")  # features are contiguous: the JIT makes these constants
_DIVISIBLE = ("a_ptr", "b_ptr", "acc_ptr", "lengths_ptr", "tokens", "M", "N", "stride_ab", "stride_at", "stride_bb",
              "stride_bt", "stride_cm")


@dataclass(frozen=True)
class KernelResources:
    """What one compiled variant of the kernel costs on a GPU of compute capability `capability` (e.g. 90)."""

    capability: int
    dtype: str
    ragged: bool
    registers: int  # per thread
    spill_bytes: int  # local memory per thread (cuobjdump's STACK + LOCAL): registers spilled
    shared_bytes: int  # per block (Triton's pipeline buffers)
    products: str  # the tensor-core instructions used: "wgmma", "tcgen05", "mma", or "none" (FMA)
    warps: int


def _tensor_core_instructions(ptx: str) -> str:
    for name in ("tcgen05", "wgmma"):
        if name in ptx:
            return name
    return "mma" if re.search(r"\bmma\.sync", ptx) else "none"


def compile_for(capability: int, dtype: torch.dtype, *, ragged: bool = True,
                blocks: Optional[tuple[int, int, int, int, int]] = None) -> KernelResources:
    """Compile the kernel for a CUDA GPU of compute capability `capability` (80 for the A100, 90 for the H100/H200)
    and `dtype` inputs, without a GPU, and read its resources from the machine code."""
    if fused_abs_grad._load_triton() is not None:
        raise DeanError(f"cannot compile the fused kernel: {fused_abs_grad._TRITON_ERROR}.")
    if fused_abs_grad.interpreting():
        raise DeanError("cannot compile the fused kernel with TRITON_INTERPRET=1: triton's own functions were built "
                        "for its interpreter; run this in a process without TRITON_INTERPRET.")
    if dtype not in _TRITON_TYPES:
        raise DeanError(f"dtype={dtype}: expected one of {sorted(str(d) for d in _TRITON_TYPES)}.")
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = JITFunction(fused_abs_grad._abs_grad_kernel)  # compiled, never interpreted, whatever TRITON_INTERPRET says
    constants, options = fused_abs_grad.launch_constants(dtype, ragged, blocks)
    constants.update({name: 1 for name in _UNIT_STRIDES})
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("a_ptr", "b_ptr"):
            signature[name] = "*" + _TRITON_TYPES[dtype]
        elif name == "acc_ptr":
            signature[name] = "*fp32"
        elif name == "lengths_ptr":
            signature[name] = "*i32"
        else:
            signature[name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name in _DIVISIBLE}
    import triton

    compiled = triton.compile(ASTSource(fn, signature, constexprs=constants, attrs=attrs),
                              target=GPUTarget("cuda", capability, 32), options=options)
    usage = _resource_usage(compiled.asm["cubin"])
    return KernelResources(capability=capability, dtype=_TRITON_TYPES[dtype], ragged=ragged,
                           registers=usage["REG"], spill_bytes=usage["STACK"] + usage.get("LOCAL", 0),
                           shared_bytes=compiled.metadata.shared,
                           products=_tensor_core_instructions(compiled.asm["ptx"]), warps=options["num_warps"])


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL... of the cubin's kernel, as `cuobjdump -res-usage` prints them."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    usage = {key: int(value) for key, value in re.findall(r"([A-Z]+):(\d+)", out)}
    if "REG" not in usage:
        raise DeanError(f"cuobjdump printed no resource usage for the kernel: {out[-300:]!r}")
    return usage


__all__ = ["KernelResources", "compile_for"]
