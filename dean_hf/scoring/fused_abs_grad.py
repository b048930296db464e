"""A fused Triton kernel for SNIP's per-sample sum: `acc += sum_i |A_i^T B_i|`, with no per-sample matrix.

For one target weight, sample i's input X_i (tokens x in) and output gradient G_i (tokens x out) give its weight
gradient G_i^T X_i (Linear's out x in layout) or X_i^T G_i (GPT-2 Conv1D's in x out): A_i^T B_i with (A, B) =
(G, X) or (X, G). Each program of the kernel owns one output tile and computes it for sample 1, 2, ... in turn (a
loop over that sample's real tokens), adds the tile's absolute value into an fp32 accumulator held in registers,
and reads and writes its tile of `acc` once. Nothing of size (out x in) is materialised per sample.

Why it is exact: each tile is the same multiply-adds as the reference product `A_i^T B_i` (torch.bmm), over the
same tokens, with fp32 accumulation (16-bit inputs are multiplied at the tensor cores' rate with fp32 sums, as
`bmm(..., out_dtype=float32)` does; fp32 inputs use IEEE fp32 products, not tf32). Only the order of the
additions within a tile may differ, which moves results by fp32 rounding (relative ~1e-7), not more.

Ragged samples: the kernel reads the right-padded (batch, tokens, features) tensors the hooks receive, through
their strides, with each sample's real length: a sample's tokens are one contiguous run, so no packed copy is
made (packing would cost a gather of X and G per module per batch) and padding is never read. One launch per
module per batch covers every sample.

Triton is optional (`pip install dean_hf[gpu]`; it ships with CUDA builds of torch). Where it cannot run (no
triton, the CPU, a GPU older than compute capability 8.0), the scorer's batched products are the fallback
(`fused_kernel_unavailable` says why), and so they are where Triton fails to compile or launch it under
`fused_kernel="auto"`. `TRITON_INTERPRET=1` runs the kernel on CPU tensors through Triton's interpreter (slow: for
tests); `fused_abs_grad_aot.py` compiles it for a GPU without one, to read its registers and shared memory.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from ..errors import DeanError

# Optional and imported on first use (`_load_triton`): the CPU install has no triton, and importing it is slow.
triton: Any = None
tl: Any = None
_TRITON_ERROR: Optional[str] = None

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Tile shapes (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): 16-bit inputs run on the tensor cores with large
# tiles; fp32 inputs use IEEE products (no tf32), which run on the FMA units, so smaller tiles.
_CONFIGS = {
    "16bit": (128, 128, 64, 8, 3),
    "fp32": (64, 64, 32, 4, 2),
}
_GROUP_M = 8  # tiles of 8 row-blocks are scheduled together so that their columns' tokens stay in L2
# The oldest GPUs the kernel is chosen on: compiled offline for sm_80, 86, 89, 90, 100 and 120, its tiles use tensor
# cores with no register spills (tests/test_fused_kernel_compile.py); on sm_75 they do not.
MIN_CAPABILITY = (8, 0)


def _load_triton() -> Optional[str]:
    """Import triton into this module's globals (the kernel's body names `tl`); None, or why it failed."""
    global triton, tl, _TRITON_ERROR
    if triton is None and _TRITON_ERROR is None:
        try:
            import triton as triton_module
            import triton.language as language
        except ImportError as err:
            _TRITON_ERROR = f"triton cannot be imported ({err})"
        else:
            triton, tl = triton_module, language
    return _TRITON_ERROR


def interpreting() -> bool:
    """Whether Triton's interpreter is on (`TRITON_INTERPRET=1`): the kernel then runs on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def fused_kernel_unavailable(device: torch.device, dtype: torch.dtype, *, allow_interpreter: bool = True
                             ) -> Optional[str]:
    """None if the kernel runs for activations of `dtype` on `device`; else why not, in words.

    It runs on CUDA devices of compute capability 8.0 or newer (Ampere on), or on the CPU under Triton's
    interpreter when `allow_interpreter`."""
    if _load_triton() is not None:
        return f"{_TRITON_ERROR}: pip install 'dean_hf[gpu]' (CUDA builds of torch ship it)"
    if dtype not in SUPPORTED_DTYPES:
        return f"the activations are {str(dtype).replace('torch.', '')}, expected float32, bfloat16 or float16"
    if device.type == "cuda":
        try:
            major, minor = torch.cuda.get_device_capability(device)
        except (AssertionError, RuntimeError) as err:  # a CPU-only build of torch, or no such device
            return f"{device} cannot be read ({err})"
        if (major, minor) < MIN_CAPABILITY:
            # Checked offline (fused_abs_grad_aot.py): on sm_75 Triton has no tensor-core product for these tiles,
            # and the kernel spills kilobytes of registers; the batched products (cuBLAS) are faster there.
            return (f"{device} has compute capability {major}.{minor}; the kernel needs "
                    f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ampere, Ada, Hopper, Blackwell)")
        return None
    if device.type == "cpu" and allow_interpreter and interpreting():
        return None
    return f"the activations are on {device}, not a CUDA device"


def fused_kernel_unavailable_here() -> Optional[str]:
    """None if the kernel can run in this process on some device: triton imports, and a CUDA GPU of compute
    capability 8.0 or newer is visible (or Triton's interpreter is on); else why not. For checks made before a model
    is loaded; `fused_kernel_unavailable` then checks the activations' device and dtype."""
    if _load_triton() is not None or interpreting():
        return fused_kernel_unavailable(torch.device("cpu"), torch.float32)
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except (AssertionError, RuntimeError) as err:  # a CPU-only build of torch, a driver that fails to initialise
        return f"the CUDA devices cannot be read ({err})"
    if not count:
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    reasons = [fused_kernel_unavailable(torch.device("cuda", i), torch.float32) for i in range(count)]
    return None if None in reasons else "; ".join(reasons)


def _abs_grad_kernel(a_ptr, b_ptr, acc_ptr, lengths_ptr, num_samples, tokens, M, N,
                     stride_ab, stride_at, stride_am, stride_bb, stride_bt, stride_bn, stride_cm, stride_cn,
                     RAGGED: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, GROUP_M: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[m, n] += sum_s |sum_{t < len_s} a[s, t, m] * b[s, t, n]|, one (BLOCK_M, BLOCK_N) tile per program."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    in_m = offs_m < M
    in_n = offs_n < N
    a_cols = offs_m.to(tl.int64)[:, None] * stride_am  # (BLOCK_M, 1): A's tile is loaded transposed
    b_cols = offs_n.to(tl.int64)[None, :] * stride_bn
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_base = a_ptr  # sample s's first token; advanced by pointer arithmetic (64-bit: no int32 overflow)
    b_base = b_ptr
    for s in range(0, num_samples):
        length = tokens
        if RAGGED:
            length = tl.load(lengths_ptr + s)
        tile = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(0, length, BLOCK_K):
            t = start + offs_k
            real = t < length
            t64 = t.to(tl.int64)
            a = tl.load(a_base + a_cols + t64[None, :] * stride_at, mask=in_m[:, None] & real[None, :], other=0.0)
            b = tl.load(b_base + t64[:, None] * stride_bt + b_cols, mask=real[:, None] & in_n[None, :], other=0.0)
            if UPCAST:  # Triton's interpreter multiplies 16-bit dots wrongly; bf16/fp16 products are exact in fp32
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                tile = tl.dot(a, b, tile, input_precision="ieee")
            else:
                tile = tl.dot(a, b, tile)
        total += tl.abs(tile)
        a_base += stride_ab
        b_base += stride_bb
    c_ptrs = acc_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n.to(tl.int64)[None, :] * stride_cn
    inside = in_m[:, None] & in_n[None, :]
    tl.store(c_ptrs, tl.load(c_ptrs, mask=inside, other=0.0) + total, mask=inside)


_COMPILED: dict[bool, Any] = {}


def _kernel() -> Any:
    """The jitted kernel, built on first use: Triton picks the interpreter or the compiler when it wraps the
    function, so a process that sets TRITON_INTERPRET later still gets the right one."""
    mode = interpreting()
    if _load_triton() is not None:
        raise DeanError(f"the fused kernel cannot run: {_TRITON_ERROR}. Score with fused_kernel='off'.")
    if mode not in _COMPILED:
        _COMPILED[mode] = triton.jit(_abs_grad_kernel)
    return _COMPILED[mode]


class LengthsOnDevice:
    """The batch's per-sample lengths as an int32 tensor on the activations' device, made once per batch: one
    pinned, asynchronous copy per device (a pageable copy would wait for the GPU), then reused by every module on
    that device (a model spread over several GPUs keeps one copy on each)."""

    def __init__(self) -> None:
        self._on: dict[torch.device, tuple[tuple[int, ...], torch.Tensor]] = {}

    def get(self, lengths: list[int], device: torch.device) -> torch.Tensor:
        key = tuple(lengths)
        cached = self._on.get(device)
        if cached is None or cached[0] != key:
            host = torch.tensor(lengths, dtype=torch.int32)
            if device.type == "cuda":
                host = host.pin_memory()
            cached = self._on[device] = (key, host.to(device, non_blocking=True))
        return cached[1]


def accumulate_abs_grad(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lengths: list[int],
                        lengths_cache: Optional[LengthsOnDevice] = None,
                        blocks: Optional[tuple[int, int, int, int, int]] = None) -> None:
    """`acc += sum_i |a[i, :n_i]^T b[i, :n_i]|` in one launch, without a per-sample (M x N) matrix.

    `acc` is fp32 (M, N) on the inputs' device; `a` (batch, tokens, M) and `b` (batch, tokens, N) are right-padded
    samples of one dtype (any strides), `lengths` each sample's real token count. `blocks` overrides the tile
    shape (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), for tests and tuning."""
    kernel = _kernel()
    batch, tokens, m = a.shape
    n = b.shape[2]
    if b.dtype != a.dtype:  # e.g. an fp32 gradient into a bf16 layer: both in the wider type, as the fallback does
        wide = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(wide), b.to(wide)
    # Features must be contiguous for the loads to be vectorised and pipelined (cp.async, TMA): a copy of the
    # (batch, tokens, features) activations costs far less than the product over them done without it.
    a = a if a.stride(2) == 1 else a.contiguous()
    b = b if b.stride(2) == 1 else b.contiguous()
    ragged = any(length != tokens for length in lengths)
    if ragged:
        cache = lengths_cache or LengthsOnDevice()
        lengths_tensor = cache.get(lengths, a.device)
    else:
        lengths_tensor = acc  # not read (RAGGED is False); any tensor on the device
    constants, options = launch_constants(a.dtype, ragged, blocks, interpreter=interpreting())
    grid = (triton.cdiv(m, constants["BLOCK_M"]) * triton.cdiv(n, constants["BLOCK_N"]),)
    kernel[grid](a, b, acc, lengths_tensor, batch, tokens, m, n,
                 a.stride(0), a.stride(1), a.stride(2), b.stride(0), b.stride(1), b.stride(2),
                 acc.stride(0), acc.stride(1), **constants, **options)


def launch_constants(dtype: torch.dtype, ragged: bool, blocks: Optional[tuple[int, int, int, int, int]] = None,
                     *, interpreter: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kernel's compile-time constants and launch options for inputs of `dtype`: one source for the launch
    above and for the offline compile check (fused_abs_grad_aot.py)."""
    ieee = dtype == torch.float32
    block_m, block_n, block_k, warps, stages = blocks or _CONFIGS["fp32" if ieee else "16bit"]
    constants = dict(RAGGED=ragged, IEEE=ieee, UPCAST=not ieee and interpreter, GROUP_M=_GROUP_M,
                     BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    # No contraction of separate multiplies and adds into FMAs: the kernel's only arithmetic outside tl.dot is
    # |tile| + total, so this changes no result; saying it silences Triton 3.9's warning about the default.
    options = dict(num_warps=warps, num_stages=stages)
    if not interpreter:
        options["enable_fp_fusion"] = False
    return constants, options


__all__ = ["MIN_CAPABILITY", "SUPPORTED_DTYPES", "LengthsOnDevice", "accumulate_abs_grad", "fused_kernel_unavailable",
           "fused_kernel_unavailable_here", "interpreting", "launch_constants"]
