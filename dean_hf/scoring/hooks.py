"""Hook lifetimes: one context that installs the scoring hooks and restores the model on exit.

The hooks never read a tensor's value on the host: a per-module read is one GPU synchronisation per
module per batch. Each gradient hook leaves a 0-dim "all finite" flag on its gradient's device instead,
and the caller reads all of a batch's flags at once (`BatchState.all_finite`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import DeanError
from ..modules import unwrap_model
from ..offload import stream_saved_weights
from .scorers import Scorer


class BatchState:
    """What the hooks need to know about the batch being run, and the finiteness flags they leave for it.

    `begin` starts a batch. With `batch_size=None` (training, where the batch is not announced), each module's
    input tells: a 3-D input is (batch, tokens, features), a 2-D one is one sample's tokens. Without `lengths`,
    every position of a sample counts (padding then gets a zero gradient from the loss, so it adds nothing).
    """

    def __init__(self, check_finite: bool = True) -> None:
        self.check_finite = check_finite
        self.batch_size: int | None = None
        self.token_mask: torch.Tensor | None = None
        self.lengths: list[int] | None = None
        self.flags: list[tuple[str, torch.Tensor]] = []  # (module, output gradient all finite), in backward order

    def begin(self, batch_size: int | None, token_mask: torch.Tensor | None = None,
              lengths: list[int] | None = None) -> None:
        """Start a batch: `lengths` are each sample's real length (host ints), `token_mask` its (B, T) mask."""
        self.batch_size, self.token_mask, self.lengths = batch_size, token_mask, lengths
        self.flags = []

    def lengths_for(self, x: torch.Tensor) -> list[int]:
        """Each sample's real length in `x` (batch, tokens, features): the batch's lengths where `x` has its width."""
        if self.lengths is not None and self.token_mask is not None and x.shape[1] == self.token_mask.shape[1]:
            return self.lengths
        return [x.shape[1]] * x.shape[0]

    def record(self, name: str, grad: torch.Tensor) -> None:
        """Note whether the output gradient of module `name` is finite, as a flag on its device (no host read)."""
        if self.check_finite:  # one reduction: a sum is finite only if every entry is (NaN and inf propagate)
            self.flags.append((name, torch.isfinite(grad.sum(dtype=torch.float32))))

    def all_finite(self, device: torch.device) -> torch.Tensor | None:
        """One 0-dim bool tensor on `device`: whether every gradient of this batch was finite (None: none seen).

        One reduction per device holding flags, then one small copy each: no host synchronisation."""
        per_device: dict[torch.device, list[torch.Tensor]] = {}
        for _, flag in self.flags:
            per_device.setdefault(flag.device, []).append(flag)
        parts = [torch.stack(flags).all().to(device) for flags in per_device.values()]
        return torch.stack(parts).all() if parts else None

    def first_nonfinite(self) -> str | None:
        """The module nearest the loss whose output gradient was not finite. Reads every flag: error path only."""
        return next((name for name, flag in self.flags if not bool(flag)), None)


class _ScoreHook:
    """Forward hook of one target module: feeds the scorer the input and, later, the output gradient."""

    def __init__(self, name: str, scorer: Scorer, acc: torch.Tensor, state: BatchState):
        self.name, self.scorer, self.acc, self.state = name, scorer, acc, state
        self.uses_forward = type(scorer).on_forward is not Scorer.on_forward  # SNIP: no per-call mask work

    def _per_sample(self, t: torch.Tensor) -> torch.Tensor:
        batch = self.state.batch_size
        if batch is None:  # not announced: the module's input tells
            batch = t.shape[0] if t.dim() >= 3 else 1
        if t.dim() >= 3 and t.shape[0] == batch:
            return t.reshape(batch, -1, t.shape[-1])
        if t.dim() == 2 and batch == 1:  # a module fed flattened tokens of a single sample
            return t.unsqueeze(0)
        raise DeanError(f"module {self.name!r} received an input of shape {tuple(t.shape)} that does not keep "
                        f"the batch dimension ({batch}); per-sample scores need it: score with batch_size=1.")

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # No gradient here: evaluation, a frozen module with nothing trainable upstream, or the no-grad first
        # forward of reentrant gradient checkpointing (its recomputation calls this hook again, with a gradient).
        wants_grad = self.scorer.needs_backward and isinstance(output, torch.Tensor) and output.requires_grad
        if not (self.uses_forward or wants_grad):
            return
        x = self._per_sample(args[0].detach())
        if self.uses_forward:
            mask = self.state.token_mask
            self.scorer.on_forward(module, self.acc, x, mask.reshape(x.shape[0], -1).to(x.device))
        if wants_grad:
            lengths = self.state.lengths_for(x)
            output.register_hook(lambda g: self._backward(module, x, g, lengths))

    def _backward(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, lengths: list[int]) -> None:
        # A non-finite gradient is accumulated too; the caller checks the batch's flags once and discards the scores.
        self.state.record(self.name, g)
        self.scorer.on_backward(module, self.acc, x, self._per_sample(g), lengths)


def add_score_hooks(modules: dict[str, nn.Module], scorer: Scorer, accumulators: dict[str, torch.Tensor],
                    state: BatchState) -> list[RemovableHandle]:
    """Register the scoring hook of `scorer` on each of `modules`; the caller removes the returned handles."""
    return [module.register_forward_hook(_ScoreHook(name, scorer, accumulators[name], state))
            for name, module in modules.items()]


def _make_input_require_grad(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if not output.requires_grad else output


def _input_as_leaf(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the block's hidden-state input becomes a new leaf that requires grad, so the backward
    stops here and nothing below records a graph."""
    if args and isinstance(args[0], torch.Tensor):
        return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_(True)}
    raise DeanError(f"{type(module).__name__} takes its hidden states neither first nor as `hidden_states`: "
                    "score it without layers_per_pass.")


@contextmanager
def scoring_hooks(model: nn.Module, modules: dict[str, nn.Module], scorer: Scorer,
                  accumulators: dict[str, torch.Tensor], *, grad_from: nn.Module | None = None) -> Iterator[BatchState]:
    """Install the hooks of `scorer` on `modules`; freeze every parameter and put the model in eval mode.

    Gradients flow through activations only, from the input embeddings on, or, with `grad_from` (a decoder
    block), from that block's input on: the backward then stops there. No parameter gets a `.grad`. On exit,
    also by an exception or KeyboardInterrupt, every hook is removed and each
    parameter's `requires_grad`, each module's train/eval mode and each `.grad` are as before.
    """
    state = BatchState()
    handles: list[RemovableHandle] = []
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    training = {m: m.training for m in model.modules()}
    try:
        for p in requires_grad:
            p.requires_grad_(False)
        model.eval()
        if scorer.needs_backward and grad_from is not None:
            handles.append(grad_from.register_forward_pre_hook(_input_as_leaf, with_kwargs=True))
        elif scorer.needs_backward:
            plain = unwrap_model(model)  # DDP, torch.compile and PEFT wrappers hold the model with the embeddings
            embeddings = plain.get_input_embeddings() if hasattr(plain, "get_input_embeddings") else None
            if embeddings is None:
                raise DeanError(f"{type(model).__name__} has no get_input_embeddings(); gradient-based "
                                "scorers need it to start the backward pass. Use scorer='wanda'.")
            handles.append(embeddings.register_forward_hook(_make_input_require_grad))
        handles.extend(add_score_hooks(modules, scorer, accumulators, state))
        with stream_saved_weights(model):  # accelerate-offloaded weights are not kept for the backward pass
            yield state
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
            p.grad = grads[p]
        for m, flag in training.items():
            m.training = flag
