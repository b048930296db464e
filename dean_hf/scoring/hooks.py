"""Hook lifetimes: one context that installs the scoring hooks and restores the model on exit."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..errors import DeanError
from .scorers import Scorer


class _BatchState:
    """What the hooks need to know about the batch being run."""

    def __init__(self) -> None:
        self.token_mask: torch.Tensor | None = None
        self.lengths: list[int] = []
        self.batch_size = 0
        self.nonfinite: str | None = None  # a module whose output gradient was NaN/inf in this batch


class _ScoreHook:
    """Forward hook of one target module: feeds the scorer the input and, later, the output gradient."""

    def __init__(self, name: str, scorer: Scorer, acc: torch.Tensor, state: _BatchState):
        self.name, self.scorer, self.acc, self.state = name, scorer, acc, state
        self.uses_forward = type(scorer).on_forward is not Scorer.on_forward  # SNIP: no per-call mask work

    def _per_sample(self, t: torch.Tensor) -> torch.Tensor:
        batch = self.state.batch_size
        if t.dim() >= 3 and t.shape[0] == batch:
            return t.reshape(batch, -1, t.shape[-1])
        if t.dim() == 2 and batch == 1:  # a module fed flattened tokens of a single sample
            return t.unsqueeze(0)
        raise DeanError(f"module {self.name!r} received an input of shape {tuple(t.shape)} that does not keep "
                        f"the batch dimension ({batch}); per-sample scores need it: score with batch_size=1.")

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = self._per_sample(args[0].detach())
        if self.uses_forward:
            mask = self.state.token_mask
            self.scorer.on_forward(module, self.acc, x, mask.reshape(x.shape[0], -1).to(x.device))
        if self.scorer.needs_backward and isinstance(output, torch.Tensor) and output.requires_grad:
            lengths = self.state.lengths if x.shape[1] == self.state.token_mask.shape[1] else [x.shape[1]] * x.shape[0]
            output.register_hook(lambda g: self._backward(module, x, g, lengths))

    def _backward(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, lengths: list[int]) -> None:
        if not bool(torch.isfinite(g).all()):
            self.state.nonfinite = self.name
            return
        self.scorer.on_backward(module, self.acc, x, self._per_sample(g), lengths)


def _make_input_require_grad(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if not output.requires_grad else output


@contextmanager
def scoring_hooks(model: nn.Module, modules: dict[str, nn.Module], scorer: Scorer,
                  accumulators: dict[str, torch.Tensor]) -> Iterator[_BatchState]:
    """Install the hooks of `scorer` on `modules`; freeze every parameter and put the model in eval mode.

    Gradients flow through activations only (from the input embeddings on): no parameter gets a
    `.grad`. On exit, also by an exception or KeyboardInterrupt, every hook is removed and each
    parameter's `requires_grad`, each module's train/eval mode and each `.grad` are as before.
    """
    state = _BatchState()
    handles = []
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    training = {m: m.training for m in model.modules()}
    try:
        for p in requires_grad:
            p.requires_grad_(False)
        model.eval()
        if scorer.needs_backward:
            embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            if embeddings is None:
                raise DeanError(f"{type(model).__name__} has no get_input_embeddings(); gradient-based "
                                "scorers need it to start the backward pass. Use scorer='wanda'.")
            handles.append(embeddings.register_forward_hook(_make_input_require_grad))
        for name, module in modules.items():
            handles.append(module.register_forward_hook(_ScoreHook(name, scorer, accumulators[name], state)))
        yield state
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
            p.grad = grads[p]
        for m, flag in training.items():
            m.training = flag
