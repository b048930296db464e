"""The per-sample response loss that scoring differentiates, computed without vocabulary-sized copies."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeanError
from ..modules import keeps_logits as _keeps_logits

# Logit elements the fused loss works through at a time (16 MiB of fp32). Its passes over a chunk are in place
# in the gradient buffer; the only other temporaries are one value per row.
_CHUNK_ELEMENTS = 4 * 1024 * 1024


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor,
                    positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean token NLL of each sample over its response tokens (labels != -100), as HF's causal-LM loss.

    `logits` (batch, positions, vocab) predict the next token at every position, or only at `positions`
    (a 1-D tensor of sequence positions, as returned by `loss_positions`) when given. `logits` is left
    unchanged."""
    logits, targets = _align(logits, labels, positions)
    # Flat (tokens, vocab) layout, as HF's loss: torch's (batch, vocab, tokens) path is less precise on CPU
    # (errors of ~1e-4 per token with a 49k vocabulary).
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                          reduction="none")
    return _mean_per_sample(nll, targets)


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """The sequence positions whose next-token logits enter the loss of some sample of the batch: the
    positions before a response token. Prompt positions need no logits (a vocabulary-sized row each)."""
    return (labels[:, 1:] != -100).any(0).nonzero().flatten()


def host_loss_positions(labels: list[list[int]]) -> list[int]:
    """`loss_positions` from the host-side labels of a batch's samples (no device read)."""
    width = max(len(row) for row in labels)
    wanted = [False] * width
    for row in labels:
        for t in range(len(row) - 1):
            if row[t + 1] != -100:
                wanted[t] = True
    return [t for t, keep in enumerate(wanted) if keep]


def _head_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where the output head computes: the positions that select its inputs must be there (with a device_map
    over several GPUs, the last one, not the input's)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hook = getattr(head, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    weight = getattr(head, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) and weight.device.type != "meta" else fallback


def forward_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                 trim_logits: bool = True, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample response loss of one right-padded batch, equal to `per_sample_loss` of the model's logits.

    With `trim_logits`, logits are computed only at the positions the loss reads when the model supports
    `logits_to_keep`. Under autograd, the gradient with respect to the logits is formed during the forward
    pass, so the logits are freed before the backward and it holds one vocabulary-sized buffer, not four.
    `positions` (from `host_loss_positions`) saves the device read that finding them from `labels` costs."""
    if trim_logits and _keeps_logits(model):
        positions = loss_positions(labels) if positions is None else positions
    else:
        positions = None
    if positions is not None and len(positions) < 2:  # a one-element tensor could be read as an int count
        positions = None
    kwargs: dict[str, Any] = {}
    if positions is not None:
        kwargs["logits_to_keep"] = positions.to(_head_device(model, ids.device), non_blocking=True)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
    if positions is not None and logits.shape[1] != len(positions):
        if logits.shape[1] != ids.shape[1]:
            raise DeanError(f"{type(model).__name__} returned logits for {logits.shape[1]} positions when asked for "
                            f"{len(positions)} of {ids.shape[1]} (logits_to_keep as a tensor of positions): its "
                            "forward reads that argument differently. Score it with trim_logits=False.")
        positions = None  # the model ignored logits_to_keep and returned every position: the loss still holds
    if positions is None and logits.shape[1] != ids.shape[1]:
        raise DeanError(f"{type(model).__name__} returned logits for {logits.shape[1]} positions for an input of "
                        f"{ids.shape[1]} tokens: scoring needs the logits of every position (a causal LM's output).")
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return per_sample_loss(logits, labels, positions)
    logits, targets = _align(logits, labels, positions)
    nll = _FusedTokenNLL.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return _mean_per_sample(nll, targets)


def _align(logits: torch.Tensor, labels: torch.Tensor, positions: Optional[torch.Tensor]):
    if positions is None:
        logits, targets = logits[:, :-1], labels[:, 1:]
    else:
        targets = labels[:, positions.to(labels.device) + 1]
    return logits.float(), targets.to(logits.device)


def _mean_per_sample(nll: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    counts = (targets != -100).sum(1)
    return nll.view(targets.shape).sum(1) / counts


class _FusedTokenNLL(torch.autograd.Function):
    """Per-row NLL of (rows, vocab) fp32 logits at `targets` (-100: ignored, NLL 0). The forward also forms
    d(nll_r)/d(logits_r) = softmax - one-hot, a chunk of rows at a time, and keeps only that: no log-softmax
    is saved, the logits can be freed at once, and the backward scales the kept rows in place."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != -100
        safe = targets.clamp_min(0)[:, None]
        nll = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[1]))
        for start in range(0, logits.shape[0], rows):
            end = start + rows
            block, out, keep = logits[start:end], grad[start:end], valid[start:end]
            # As torch's log_softmax: shift by the row maximum first (exact), so that the softmax of the likely
            # tokens, and softmax - 1 at a confident target, keep full precision.
            torch.sub(block, block.amax(dim=1, keepdim=True), out=out)
            shifted_target = out.gather(1, safe[start:end])[:, 0]
            total = out.exp_().sum(dim=1)
            nll[start:end] = torch.where(keep, total.log() - shifted_target, 0.0)
            out.div_(total[:, None])
            out.scatter_add_(1, safe[start:end], -torch.ones_like(total)[:, None])
            out.mul_(keep[:, None])
        ctx.save_for_backward(grad)
        ctx.spent = False
        return nll

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        if ctx.spent:
            raise RuntimeError("the scoring loss supports one backward pass (retain_graph is not supported).")
        ctx.spent = True
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_nll[:, None]), None
