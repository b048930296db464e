"""`DeanCallback`: keep a DEAN mask enforced while a model is fine-tuned with `transformers.Trainer`,
and optionally collect importance scores from the training run itself.

Scores collected during training use the per-sample |gradient| rule on the *training* loss: the Trainer's
loss averages over all response tokens of a batch (not per sample) and is divided by
`gradient_accumulation_steps`, so samples are weighted by their token count; with batch size 1 and no
accumulation it equals `score_importance`. Gradient clipping does not change them (the hooks see the
gradients before clipping). They use the weights at the end of training for `|W|`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import TrainerCallback

from .errors import DeanError
from .mask import NeuronMask
from .scoring import ImportanceScores
from .scoring.scorers import SnipScorer
from .targets import TargetModules, find_target_modules, is_target_type


def _base_layer(module: nn.Module) -> nn.Module:
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module


def resolve_modules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Map mask module names onto `model`, also when PEFT wraps it (prefixes, LoRA `base_layer`)."""
    named = dict(model.named_modules())
    out = {}
    for name in names:
        module = named.get(name)
        if module is None:
            candidates = [n for n in named if n.endswith("." + name)]
            if len(candidates) != 1:
                raise DeanError(f"the mask's module {name!r} is not in this model ({len(candidates)} matches): "
                                "the mask was made for another model.")
            module = named[candidates[0]]
        module = _base_layer(module)
        if not is_target_type(module):
            raise DeanError(f"module {name!r} is a {type(module).__name__}, not a Linear/Conv1D.")
        out[name] = module
    return out


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
        self.mask, self.collect_scores, self.target_modules = mask, collect_scores, target_modules
        self.scores: Optional[ImportanceScores] = None
        self._masked: dict[str, nn.Module] = {}
        self._handles: list = []
        self._acc: dict[str, torch.Tensor] = {}
        self._score_modules: dict[str, nn.Module] = {}
        self._samples = 0

    # -------------------------------------------------------------- enforcing the mask
    @torch.no_grad()
    def _zero_weights(self) -> None:
        for name, module in self._masked.items():
            flat = module.weight.data.view(-1)
            flat[self.mask[name].to(flat.device)] = 0

    @torch.no_grad()
    def _zero_grads(self) -> None:
        for name, module in self._masked.items():
            grad = module.weight.grad
            if grad is not None:
                grad.view(-1)[self.mask[name].to(grad.device)] = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None, **kwargs: Any):
        if model is None:
            raise DeanError("DeanCallback needs the model: use it with transformers.Trainer.")
        if self.mask is not None:
            self._masked = resolve_modules(model, list(self.mask))
            for name, module in self._masked.items():
                if tuple(module.weight.shape) != tuple(self.mask.shapes[name]):
                    raise DeanError(f"module {name!r} has shape {tuple(module.weight.shape)}, the mask expects "
                                    f"{tuple(self.mask.shapes[name])}.")
            self._zero_weights()
        if self.collect_scores:
            self._install_hooks(model)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self._zero_grads()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self._zero_weights()  # optimizer state (momentum, weight decay) cannot move them

    def on_train_end(self, args: Any, state: Any, control: Any, model: Optional[nn.Module] = None, **kwargs: Any):
        self.remove_hooks()
        if self.collect_scores and self._acc:
            scorer = SnipScorer()
            scores = {n: scorer.finalize(self._score_modules[n], acc) for n, acc in self._acc.items()}
            self.scores = ImportanceScores(scores, {"scorer": "snip", "source": "training",
                                                    "num_samples": self._samples})
            self._acc = {}

    # -------------------------------------------------------------- scores from training
    def _install_hooks(self, model: nn.Module) -> None:
        scorer = SnipScorer()
        found = find_target_modules(model, self.target_modules)
        # Under PEFT, score the base layers (LoRA wrappers are not Linear themselves).
        self._score_modules = {n.replace(".base_layer", ""): m for n, m in found.items()
                               if not any(part.startswith("lora_") for part in n.split("."))}
        self._acc = {n: scorer.init(m) for n, m in self._score_modules.items()}

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                if not isinstance(output, torch.Tensor) or not output.requires_grad:
                    return  # evaluation, or a frozen module with nothing trainable upstream
                x = args[0].detach()
                x3 = x if x.dim() == 3 else x.unsqueeze(0)
                if name == next(iter(self._score_modules)):
                    self._samples += x3.shape[0]
                lengths = [x3.shape[1]] * x3.shape[0]
                output.register_hook(lambda g: scorer.on_backward(module, self._acc[name], x3,
                                                                  g if g.dim() == 3 else g.unsqueeze(0), lengths))
            return hook

        for name, module in self._score_modules.items():
            self._handles.append(module.register_forward_hook(make_hook(name)))

    def remove_hooks(self) -> None:
        """Remove the score-collecting hooks (done at the end of training; call it if training crashed)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
