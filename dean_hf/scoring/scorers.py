"""Importance scorers: what the hooks accumulate per weight, and how it becomes a score.

A scorer sees, for each target module, the module's input `x` (batch, tokens, in) on the forward
pass and, if it `needs_backward`, the gradient of the loss at the module's output `g`
(batch, tokens, out). Register new scorers with `register_scorer`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import DeanError
from ..logging import get_logger
from ..offload import readable, storage_device
from ..targets import is_conv1d

logger = get_logger(__name__)

_SCORERS: dict[str, type["Scorer"]] = {}

# Upper bound on the temporary per-sample gradient block, in elements (about 256 MiB in fp32).
_MAX_BLOCK_ELEMENTS = 64 * 1024 * 1024


def register_scorer(name: str) -> Callable[[type["Scorer"]], type["Scorer"]]:
    """Class decorator: make a `Scorer` subclass available as `score_importance(..., scorer=name)`."""

    def wrap(cls: type[Scorer]) -> type[Scorer]:
        cls.name = name
        _SCORERS[name] = cls
        return cls

    return wrap


def get_scorer(name: str) -> "Scorer":
    """A new scorer instance by registered name."""
    if name not in _SCORERS:
        raise DeanError(f"scorer={name!r} is unknown: choose one of {sorted(_SCORERS)} "
                        "or register your own with dean_hf.scoring.register_scorer.")
    return _SCORERS[name]()


def available_scorers() -> list[str]:
    """The registered scorer names."""
    return sorted(_SCORERS)


FUSED_KERNEL_CHOICES = ("auto", "on", "off")


def check_fused_kernel(value: object) -> str:
    """`fused_kernel` as one of FUSED_KERNEL_CHOICES, or DeanError."""
    if not isinstance(value, str) or value not in FUSED_KERNEL_CHOICES:
        raise DeanError(f"fused_kernel={value!r}: expected 'auto' (the fused Triton kernel where it runs: CUDA, "
                        "triton installed, float32/bfloat16/float16), 'on' (always; an error where it cannot run) or "
                        "'off' (the batched per-sample products).")
    return value


def cannot_run_error(why: str) -> DeanError:
    """The error of `fused_kernel='on'` where the kernel cannot run, `why` saying why."""
    return DeanError(f"fused_kernel='on' but the fused kernel cannot run: {why}. Use fused_kernel='auto' (the batched "
                     "products where it cannot run) or 'off'.")


class Scorer:
    """Base class of importance scorers. Accumulators are fp32 and live on the weight's device.

    `fused_kernel` ('auto', 'on', 'off') says whether a scorer with a fused kernel (SNIP) uses it; others ignore
    it."""

    name = "base"
    needs_backward = False
    fused_kernel = "auto"
    has_fused_kernel = False

    def init(self, module: nn.Module) -> torch.Tensor:
        """A fresh accumulator for `module`, where its weight is kept (the CPU for accelerate-offloaded weights)."""
        return torch.zeros(module.weight.shape, dtype=torch.float32, device=storage_device(module))

    def on_forward(self, module: nn.Module, acc: torch.Tensor, x: torch.Tensor, token_mask: torch.Tensor) -> None:
        """Called with the module input `x` (B, T, in) and the real-token mask (B, T)."""

    def on_backward(self, module: nn.Module, acc: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                    lengths: list[int]) -> None:
        """Called with the module input `x` (B, T, in), the output gradient `g` (B, T, out) and each sample's
        real length (batches are right-padded: positions past it are padding)."""

    def finalize(self, module: nn.Module, acc: torch.Tensor) -> torch.Tensor:
        """The fp32 score tensor, of the weight's shape, from the accumulator."""
        raise NotImplementedError


def _bf16_fp32_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a, b, out_dtype=torch.float32)


_OUT_DTYPE_WORKS: dict[tuple[str, torch.dtype], bool] = {}


def _fp32_product(x: torch.Tensor):
    """The batched product that gives fp32 per-sample gradients: for bf16/fp16 activations on a GPU, a product of
    the 16-bit inputs with fp32 accumulation and fp32 output (the same numbers as casting them to fp32 first, at
    the tensor cores' 16-bit rate instead of the fp32 rate); elsewhere fp32 inputs and `torch.bmm`."""
    if x.dtype not in (torch.bfloat16, torch.float16) or x.device.type != "cuda":
        return torch.bmm
    key = (x.device.type, x.dtype)
    if key not in _OUT_DTYPE_WORKS:
        try:
            probe = torch.ones(1, 2, 2, dtype=x.dtype, device=x.device)
            _OUT_DTYPE_WORKS[key] = _bf16_fp32_bmm(probe, probe).dtype == torch.float32
        except (RuntimeError, TypeError):
            _OUT_DTYPE_WORKS[key] = False
    return _bf16_fp32_bmm if _OUT_DTYPE_WORKS[key] else torch.bmm


@register_scorer("snip")
class SnipScorer(Scorer):
    """SNIP: `|W| * sum_i |dL_i/dW|`, the absolute value taken per sample before the sum."""

    needs_backward = True
    has_fused_kernel = True

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether this call runs the fused kernel: 'off' never; 'auto' where it runs (CUDA); 'on' always, or a
        DeanError saying why it cannot (Triton's interpreter counts for 'on': tests run the kernel on the CPU)."""
        if self.fused_kernel == "off" or getattr(self, "_kernel_failed", None):
            return False
        decided = self.__dict__.setdefault("_runs_on", {})  # asked once per device and dtype, not per module
        key = (x.device, x.dtype)
        if key not in decided:
            from .fused_abs_grad import fused_kernel_unavailable

            why = fused_kernel_unavailable(x.device, x.dtype, allow_interpreter=self.fused_kernel == "on")
            if why is not None and self.fused_kernel == "on":
                raise cannot_run_error(why)
            decided[key] = why is None
        return decided[key]

    def on_backward(self, module: nn.Module, acc: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                    lengths: list[int]) -> None:
        # The products run where the activations are; an offloaded module's accumulator (on the CPU) gets the sum.
        g = g.to(device=x.device)
        # Per-sample weight gradient: Linear stores (out, in) -> g^T x; Conv1D stores (in, out) -> x^T g.
        if self._fused(x):
            from .fused_abs_grad import LengthsOnDevice, accumulate_abs_grad

            if not hasattr(self, "_lengths"):
                self._lengths = LengthsOnDevice()  # one host-to-device copy of the lengths per batch
            left, right = (x, g) if is_conv1d(module) else (g, x)
            total = acc if acc.device == x.device else torch.zeros_like(acc, device=x.device)
            try:
                accumulate_abs_grad(total, left, right, lengths, self._lengths)
            except torch.OutOfMemoryError:  # the products would need more memory still: not the kernel's fault
                raise
            except Exception as err:  # Triton failed to compile or launch it: nothing was added to `total`
                if self.fused_kernel == "on":
                    raise
                first_line = (str(err).strip().splitlines() or [""])[0]
                self._kernel_failed = f"{type(err).__name__}: {first_line}"
                logger.warning("the fused kernel failed on %s (%s); scoring goes on with the batched per-sample "
                               "products (the same scores). Pass fused_kernel='off' to skip it, or 'on' to see the "
                               "error. (A layers_per_pass='auto' plan counted no per-sample temporaries.)", x.device,
                               self._kernel_failed[:300])
            else:
                if total is not acc:
                    acc.add_(total.to(acc.device))
                return
        product = _fp32_product(x)
        if product is torch.bmm:  # fp32 inputs (CPU, or a float32 model)
            x, g = x.to(torch.float32), g.to(torch.float32)
        left, right = (x, g) if is_conv1d(module) else (g, x)
        if len(set(lengths)) > 1 or lengths[0] != x.shape[1]:
            # Ragged batch: one product per sample over its real tokens only, so padding costs nothing here.
            total = acc if acc.device == x.device else torch.zeros_like(acc, device=x.device)
            for i, n in enumerate(lengths):
                total.add_(product(left[i:i + 1, :n].transpose(1, 2), right[i:i + 1, :n])[0].abs_())
            if total is not acc:
                acc.add_(total.to(acc.device))
            return
        left = left.transpose(1, 2)
        per_block = max(1, _MAX_BLOCK_ELEMENTS // max(1, acc.numel()))
        for start in range(0, x.shape[0], per_block):
            block = product(left[start:start + per_block], right[start:start + per_block]).abs_()
            acc.add_((block[0] if block.shape[0] == 1 else block.sum(0)).to(acc.device))

    def finalize(self, module: nn.Module, acc: torch.Tensor) -> torch.Tensor:
        with readable(module):  # |W| is read once, at the end (offloaded weights are loaded for it)
            return acc.mul_(module.weight.detach().to(acc.device, torch.float32).abs())


@register_scorer("wanda")
class WandaScorer(Scorer):
    """Wanda: `|W_jk| * ||X_k||_2`, the norm of input feature k over every real token of the data."""

    def init(self, module: nn.Module) -> torch.Tensor:
        w = module.weight
        in_features = w.shape[0] if is_conv1d(module) else w.shape[1]
        return torch.zeros(in_features, dtype=torch.float32, device=storage_device(module))

    def on_forward(self, module: nn.Module, acc: torch.Tensor, x: torch.Tensor, token_mask: torch.Tensor) -> None:
        x = x.to(dtype=torch.float32)
        mask = token_mask.to(device=x.device, dtype=torch.float32)
        acc.add_(torch.einsum("bti,bt->i", x * x, mask).to(acc.device))

    def finalize(self, module: nn.Module, acc: torch.Tensor) -> torch.Tensor:
        norms = acc.sqrt_()
        norms = norms[:, None] if is_conv1d(module) else norms[None, :]
        with readable(module):
            return module.weight.detach().to(acc.device, torch.float32).abs() * norms
