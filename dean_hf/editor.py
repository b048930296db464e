"""`DeanEditor`: applies named coupled-neuron masks to a model, PEFT style, reversibly."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn

from . import hub
from .config import DeanConfig
from .errors import DeanError
from .fingerprint import check_fingerprint, weight_fingerprint
from .logging import get_logger
from .mask import NeuronMask
from .targets import is_target_type

logger = get_logger(__name__)


class DeanEditor:
    """Wrap a causal LM and apply DEAN masks to it: zero the masked weights in place, restorably.

    Calls, `generate` and attribute access go to the wrapped model, so the editor is used like the
    model. Several named masks may be loaded; one is active (applied) at a time.
    """

    def __init__(self, model: nn.Module, config: Optional[DeanConfig] = None, adapter_name: str = "default"):
        if not isinstance(model, nn.Module):
            raise DeanError(f"DeanEditor needs a torch model, got a {type(model).__name__}.")
        if isinstance(model, DeanEditor):
            raise DeanError("this model is already wrapped by a DeanEditor: use editor.add_mask instead.")
        self.model = model
        self.configs: dict[str, DeanConfig] = {}
        self.masks: dict[str, NeuronMask] = {}
        self._active: Optional[str] = None
        self._originals: dict[str, torch.Tensor] = {}
        self._default_name = adapter_name
        self._default_config = config or DeanConfig()
        if self._default_config.base_model_name_or_path is None:
            self._default_config.base_model_name_or_path = getattr(getattr(model, "config", None),
                                                                   "_name_or_path", None) or None

    # ----------------------------------------------------------------- the wrapped model
    def __getattr__(self, name: str) -> Any:
        if name == "model":  # only reached before __init__ set it
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward."""
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's `generate`."""
        return self.model.generate(*args, **kwargs)

    @property
    def base_model(self) -> nn.Module:
        """The wrapped model (masked in place while a mask is active)."""
        return self.model

    @property
    def active_mask(self) -> Optional[str]:
        """Name of the applied mask, or None."""
        return self._active

    @property
    def config(self) -> DeanConfig:
        """Config of the active mask (or the editor's default config)."""
        return self.configs.get(self._active, self._default_config) if self._active else self._default_config

    def __repr__(self) -> str:
        return f"DeanEditor(masks={list(self.masks)}, active={self._active!r}, model={type(self.model).__name__})"

    # ----------------------------------------------------------------- masks
    def _named_modules(self) -> dict[str, nn.Module]:
        return dict(self.model.named_modules())

    def _validate(self, mask: NeuronMask) -> dict[str, nn.Module]:
        modules = self._named_modules()
        missing = [n for n in mask if n not in modules]
        if missing:
            raise DeanError(f"the mask names {len(missing)} module(s) this model does not have (e.g. {missing[0]!r}): "
                            "it was made for another architecture. Load it onto its base model.")
        found = {}
        for name in mask:
            module = modules[name]
            weight = getattr(module, "weight", None)
            if not is_target_type(module) or not isinstance(weight, torch.Tensor):
                raise DeanError(f"module {name!r} is a {type(module).__name__}, not a Linear/Conv1D: "
                                "the mask was made for another model.")
            if tuple(weight.shape) != tuple(mask.shapes[name]):
                raise DeanError(f"module {name!r} has weight shape {tuple(weight.shape)}, the mask expects "
                                f"{tuple(mask.shapes[name])}: it was made for another model size.")
            if not weight.is_contiguous():
                raise DeanError(f"the weight of {name!r} is not contiguous; call model.to(...) or "
                                ".contiguous() on it before applying a mask.")
            if weight.device.type == "meta":
                raise DeanError(f"the weight of {name!r} is on the meta device (offloaded?); load the model "
                                "onto real devices before applying a mask.")
            found[name] = module
        return found

    def add_mask(self, adapter_name: str, mask: NeuronMask, config: Optional[DeanConfig] = None,
                 *, check_base_model: bool = True) -> None:
        """Register `mask` under `adapter_name` (checked against the model; not applied: see `set_mask`)."""
        if not isinstance(mask, NeuronMask):
            raise DeanError(f"mask is a {type(mask).__name__}, expected a NeuronMask.")
        if not isinstance(adapter_name, str) or not adapter_name:
            raise DeanError(f"adapter_name={adapter_name!r}: expected a non-empty string.")
        if adapter_name in self.masks:
            raise DeanError(f"a mask named {adapter_name!r} exists already: delete_mask it first or pick another name.")
        modules = self._validate(mask)
        config = config or DeanConfig(**{**self._default_config.to_dict(), "base_model_fingerprint": None})
        if check_base_model:
            with self._originals_restored():
                check_fingerprint(config.base_model_fingerprint, modules, mask)
        self.masks[adapter_name], self.configs[adapter_name] = mask, config

    def set_mask(self, adapter_name: str) -> None:
        """Apply the mask `adapter_name` (the active one, if any, is restored first)."""
        if adapter_name not in self.masks:
            raise DeanError(f"no mask named {adapter_name!r}; loaded: {list(self.masks)}.")
        modules = self._validate(self.masks[adapter_name])
        self._restore()
        self._apply(adapter_name, modules)

    def delete_mask(self, adapter_name: str) -> None:
        """Forget the mask `adapter_name` (restoring the weights first if it is active)."""
        if adapter_name not in self.masks:
            raise DeanError(f"no mask named {adapter_name!r}; loaded: {list(self.masks)}.")
        if adapter_name == self._active:
            self._restore()
        del self.masks[adapter_name], self.configs[adapter_name]

    @torch.no_grad()
    def _apply(self, adapter_name: str, modules: Mapping[str, nn.Module]) -> None:
        mask = self.masks[adapter_name]
        originals = {}
        for name, module in modules.items():
            flat = module.weight.data.view(-1)
            idx = mask[name].to(flat.device)
            originals[name] = flat[idx].clone()
        for name, module in modules.items():  # everything is read before anything is written
            flat = module.weight.data.view(-1)
            flat[mask[name].to(flat.device)] = 0
        self._originals, self._active = originals, adapter_name

    @torch.no_grad()
    def _restore(self) -> None:
        if self._active is None:
            return
        mask, modules = self.masks[self._active], self._named_modules()
        for name, values in self._originals.items():
            flat = modules[name].weight.data.view(-1)
            flat[mask[name].to(flat.device)] = values.to(flat.dtype)
        self._originals, self._active = {}, None

    @contextmanager
    def _originals_restored(self) -> Iterator[None]:
        active = self._active
        self._restore()
        try:
            yield
        finally:
            if active is not None:
                self._apply(active, self._validate(self.masks[active]))

    @contextmanager
    def disable_mask(self) -> Iterator[None]:
        """Run the original weights inside the block; the mask is applied again on exit."""
        with self._originals_restored():
            yield

    def unload(self) -> nn.Module:
        """The base model with its exact original weights; the editor is emptied."""
        self._restore()
        self.masks.clear()
        self.configs.clear()
        return self.model

    def merge_and_unload(self) -> nn.Module:
        """The model with the active mask's zeros kept in its weights; the editor is emptied."""
        if self._active is None:
            logger.warning("merge_and_unload with no active mask: the model is returned unchanged.")
        self._originals, self._active = {}, None
        self.masks.clear()
        self.configs.clear()
        return self.model

    # ----------------------------------------------------------------- fitting
    def fit(self, tokenizer: Any, targets: Mapping[str, Any], general: Any = None, *,
            adapter_name: Optional[str] = None, show_progress: bool = True) -> NeuronMask:
        """Score the model on each data set, select `(T_1 ∩ ... ∩ T_n) \\ G`, add the mask and apply it.

        `targets` maps names (e.g. "fairness", "privacy") to data: records, a CSV/JSONL path, a
        `datasets.Dataset` or a Hub id, with prompt/response columns. `general` is the utility data.
        """
        from .pipeline import score_datasets  # noqa: PLC0415 - keeps the editor importable without datasets
        from .selection import select_coupled_neurons

        name = adapter_name or self._default_name
        cfg = self._default_config
        with self._originals_restored():
            scores = score_datasets(self.model, tokenizer, targets, general, cfg, show_progress=show_progress)
            general_scores = scores.pop(cfg.general_dataset or "general") if general is not None else None
            mask = select_coupled_neurons(scores, general_scores, q=cfg.q, p=cfg.p, legacy=cfg.legacy)
            fingerprint = weight_fingerprint(self._validate(mask))
        named = {**targets, **({cfg.general_dataset or "general": general} if general is not None else {})}
        sources = {k: str(v) for k, v in named.items() if isinstance(v, (str, os.PathLike))}
        config = DeanConfig(**{**cfg.to_dict(), "target_datasets": list(targets),
                               "general_dataset": cfg.general_dataset if general is not None else None,
                               "base_model_fingerprint": fingerprint, "dataset_sources": sources or None})
        self.add_mask(name, mask, config, check_base_model=False)
        self.set_mask(name)
        logger.info("DEAN mask %r: %s weights zeroed", name, hub.fraction_text(mask))
        return mask

    # ----------------------------------------------------------------- artifacts
    def _config_for_save(self, adapter_name: str) -> DeanConfig:
        config = self.configs[adapter_name]
        if config.base_model_fingerprint is None:
            with self._originals_restored():
                modules = self._validate(self.masks[adapter_name])
                config.base_model_fingerprint = weight_fingerprint(modules)
        return config

    def _resolve_name(self, adapter_name: Optional[str]) -> str:
        name = adapter_name or self._active or (next(iter(self.masks)) if len(self.masks) == 1 else None)
        if name is None or name not in self.masks:
            raise DeanError(f"no mask to save (adapter_name={adapter_name!r}, loaded: {list(self.masks)}).")
        return name

    def save_pretrained(self, save_directory: str | os.PathLike, adapter_name: Optional[str] = None,
                        evaluation: Optional[str] = None) -> Path:
        """Write the mask artifact (config, mask, model card) of `adapter_name` (default: the active one)."""
        name = self._resolve_name(adapter_name)
        config, mask = self._config_for_save(name), self.masks[name]
        card = hub.render_card(config, mask, evaluation=evaluation)
        return hub.save_artifact(save_directory, config, mask, card=card)

    @classmethod
    def from_pretrained(cls, model: nn.Module | str, dir_or_repo_id: str | os.PathLike, *,
                        revision: Optional[str] = None, token: Optional[str] = None, adapter_name: str = "default",
                        check_base_model: bool = True, **model_kwargs: Any) -> "DeanEditor":
        """Load a mask artifact from a folder or the Hub onto `model` (a model, or a name to load) and apply it.

        Every module name, shape and index is checked before any weight changes.
        """
        if isinstance(model, (str, os.PathLike)):
            from .models import load_model

            model = load_model(str(model), **model_kwargs)
        editor = cls(model, adapter_name=adapter_name)
        editor.load_mask(dir_or_repo_id, adapter_name, revision=revision, token=token,
                         check_base_model=check_base_model)
        editor.set_mask(adapter_name)
        return editor

    def load_mask(self, dir_or_repo_id: str | os.PathLike, adapter_name: str, *, revision: Optional[str] = None,
                  token: Optional[str] = None, check_base_model: bool = True) -> NeuronMask:
        """Load a mask artifact under `adapter_name` without applying it (see `set_mask`)."""
        config, mask = hub.load_artifact(dir_or_repo_id, revision=revision, token=token)
        self.add_mask(adapter_name, mask, config, check_base_model=check_base_model)
        return mask

    def push_to_hub(self, repo_id: str, *, adapter_name: Optional[str] = None, merged: bool = False,
                    private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: Optional[str] = None, evaluation: Optional[str] = None, **kwargs: Any):
        """Upload the mask artifact (or, `merged=True`, the edited checkpoint and its card) in one commit."""
        name = self._resolve_name(adapter_name)
        config, mask = self._config_for_save(name), self.masks[name]
        if not merged:
            return hub.push_artifact(repo_id, config, mask, private=private, token=token,
                                     commit_message=commit_message or f"Add DEAN mask {name!r}", **kwargs)
        if name != self._active:
            raise DeanError(f"merged=True pushes the weights with the active mask; {name!r} is not active: "
                            f"call set_mask({name!r}) first.")
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp)
            hub.render_card(config, mask, repo_id=repo_id, merged=True, evaluation=evaluation).save(f"{tmp}/README.md")
            return hub.upload(tmp, repo_id, private=private, token=token,
                              commit_message=commit_message or "Upload DEAN-edited model", **kwargs)
