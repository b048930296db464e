"""`DeanCallback`: keep a DEAN mask enforced while a model is fine-tuned with `transformers.Trainer`,
and optionally collect importance scores from the training run itself.

Scores collected during training use the per-sample |gradient| rule on the *training* loss: the Trainer's
loss averages over all response tokens of a batch (not per sample) and is divided by
`gradient_accumulation_steps`, so samples are weighted by their token count; with batch size 1 and no
accumulation it equals `score_importance`. Gradient clipping does not change them (the hooks see the
gradients before clipping), nor does gradient checkpointing (reentrant or not). They use the weights at the
end of training for `|W|`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import TrainerCallback

from .errors import DeanError
from .mask import NeuronMask
from .modules import resolve_modules, unwrap_model
from .scoring import ImportanceScores
from .scoring.hooks import BatchState, add_score_hooks
from .scoring.scorers import SnipScorer
from .targets import TargetModules, find_target_modules


class _TrainingScores:
    """SNIP scores of the training batches, by the hooks of `dean_hf.scoring`, and the number of samples seen."""

    def __init__(self, model: nn.Module, target_modules: TargetModules):
        self.scorer = SnipScorer()
        self.modules = find_target_modules(model, target_modules)  # canonical names; a LoRA layer's base layer
        self.accumulators = {n: self.scorer.init(m) for n, m in self.modules.items()}
        self.num_samples = 0
        # The batch is not announced: each module's input gives its batch size, every position counts.
        self._handles = add_score_hooks(self.modules, self.scorer, self.accumulators, BatchState(check_finite=False))
        embeddings = unwrap_model(model).get_input_embeddings()
        if embeddings is None:
            self.remove()
            raise DeanError(f"{type(unwrap_model(model)).__name__} has no get_input_embeddings(); collect_scores "
                            "needs it to count the training samples.")
        # Samples are counted where the token ids enter the model, once per forward: gradient checkpointing calls
        # the hooks of the target modules a second time when it recomputes a block during the backward pass.
        self._handles.append(embeddings.register_forward_pre_hook(self._count))

    def _count(self, module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):  # no grad: evaluation
            self.num_samples += args[0].shape[0] if args[0].dim() >= 2 else 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def finalize(self) -> ImportanceScores:
        scores = {n: self.scorer.finalize(self.modules[n], acc) for n, acc in self.accumulators.items()}
        self.accumulators = {}
        return ImportanceScores(scores, {"scorer": "snip", "source": "training", "num_samples": self.num_samples})


class DeanCallback(TrainerCallback):
    """Masked weights stay exactly zero through training; optionally, scores are collected on the way.

    Args:
        mask: the mask to enforce (None: only collect scores).
        collect_scores: collect SNIP scores of `target_modules` during training (see `scores`).
        target_modules: modules scored when `collect_scores` is True.
    """

    def __init__(self, mask: Optional[NeuronMask] = None, *, collect_scores: bool = False,
                 target_modules: TargetModules = "all-linear"):
        if mask is None and not collect_scores:
            raise DeanError("DeanCallback needs a mask to enforce, collect_scores=True, or both.")
        if mask is not None and getattr(mask, "scale", 0.0):
            raise DeanError(f"DeanCallback keeps masked weights at exactly zero during training; this mask scales them "
                            f"(scale={mask.scale:g}) instead, which training cannot hold fixed. Fine-tune first and "
                            "apply the scaled mask afterwards.")
        self.mask, self.collect_scores, self.target_modules = mask, collect_scores, target_modules
        self.scores: Optional[ImportanceScores] = None
        self._masked: dict[str, nn.Module] = {}
        self._indices: dict[str, torch.Tensor] = {}  # the mask's flat indices, on each weight's device
        self._collector: Optional[_TrainingScores] = None

    # -------------------------------------------------------------- enforcing the mask
    def _index(self, name: str, device: torch.device) -> torch.Tensor:
        index = self._indices[name]
        if index.device != device:  # only if the model moved after on_train_begin
            index = self._indices[name] = index.to(device)
        return index

    @torch.no_grad()
    def _zero_weights(self) -> None:
        for name, module in self._masked.items():
            flat = module.weight.data.view(-1)
            flat.index_fill_(0, self._index(name, flat.device), 0)

    @torch.no_grad()
    def _zero_grads(self) -> None:
        for name, module in self._masked.items():
            grad = module.weight.grad
            if grad is not None:
                grad.view(-1).index_fill_(0, self._index(name, grad.device), 0)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None, **kwargs: Any):
        if model is None:
            raise DeanError("DeanCallback needs the model: use it with transformers.Trainer.")
        if self.mask is not None:
            self._masked = resolve_modules(model, list(self.mask))
            for name, module in self._masked.items():
                if tuple(module.weight.shape) != tuple(self.mask.shapes[name]):
                    raise DeanError(f"module {name!r} has shape {tuple(module.weight.shape)}, the mask expects "
                                    f"{tuple(self.mask.shapes[name])}.")
            # Moved once here, not at every step (a host-to-device copy per module per step on a GPU).
            self._indices = {n: self.mask[n].to(m.weight.device) for n, m in self._masked.items()}
            self._zero_weights()
        if self.collect_scores:
            self.remove_hooks()
            self._collector = _TrainingScores(model, self.target_modules)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self._zero_grads()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self._zero_weights()  # optimizer state (momentum, weight decay) cannot move them

    def on_train_end(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None, **kwargs: Any):
        collector = self._collector
        self.remove_hooks()
        if collector is not None:
            self.scores = collector.finalize()

    def remove_hooks(self) -> None:
        """Remove the score-collecting hooks (done at the end of training; call it if training crashed)."""
        if self._collector is not None:
            self._collector.remove()
            self._collector = None
