"""`DeanEditor`: the PEFT-style surface over a model's masks.

A `DeanEditor` is a `torch.nn.Module` that wraps a causal LM as `PeftModel` does: calling it, `generate`,
`.to()/.eval()/.train()` and every attribute it does not define go to the wrapped model (`editor.config` is
the model's config). The masks themselves live in the model's `MaskState` (dean_hf/state.py); this class
only names the operations, with PEFT's names (`set_adapter`, `disable_adapter`, ...) and dean_hf's (`set_mask`,
`disable_mask`, ...) for each.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional, Sequence

from torch import nn

from . import hub
from .config import DeanConfig
from .errors import DeanError, UnsupportedError, quote
from .fingerprint import check_fingerprint, weight_fingerprint
from .logging import get_logger
from .mask import NeuronMask
from .editor_artifacts import ArtifactMixin
from .state import MaskState, state_for

logger = get_logger(__name__)

# PEFT names with no meaning for a mask of zeros, and what to use instead.
_UNSUPPORTED = {
    "merge_adapter": "a mask is applied in place already; use merge_and_unload() to keep it for good",
    "unmerge_adapter": "use disable_adapter() (a block) or unload() to get the original weights back",
    "add_weighted_adapter": "masks do not combine by weights; select a new mask from the scores instead",
    "enable_adapter_layers": "use set_adapter(name)",
    "disable_adapter_layers": "use the disable_adapter() block, or unload()",
    "set_requires_grad": "a mask has no trainable parameters",
    "get_nb_trainable_parameters": "a mask has no trainable parameters; see mask_summary()",
    "get_prompt": "DEAN is not prompt learning",
    "get_prompt_embedding_to_save": "DEAN is not prompt learning",
    "get_layer_status": "see mask_summary() and masks[name].counts_per_module()",
    "get_model_status": "see mask_summary()",
    "modules_to_save": "a mask saves no modules",
    "create_or_update_model_card": "save_pretrained writes the model card",
}


def _register_with_pipelines() -> None:
    """List DeanEditor among the text-generation pipeline's supported wrapper models, beside PEFT's
    `PeftModelForCausalLM` (transformers' `SUPPORTED_PEFT_TASKS`), so that `pipeline("text-generation",
    model=editor)` does not log that the model is not supported. Only when transformers' pipelines are imported
    (they are, while a pipeline is built): importing them here would make the editor slow to import."""
    pipelines = sys.modules.get("transformers.pipelines.base")
    supported = getattr(pipelines, "SUPPORTED_PEFT_TASKS", None)
    if isinstance(supported, dict):
        names = supported.setdefault("text-generation", [])
        if "DeanEditor" not in names:
            names.append("DeanEditor")


def _refuse_trainer(editor: "DeanEditor", caller_locals: Mapping[str, Any]) -> None:
    """`Trainer(model=editor)` would train and then save the editor's raw state dict, which `from_pretrained`
    cannot load: refuse, with the fix, when a transformers Trainer given this editor as its model asks it for any
    attribute (its `__init__` reads e.g. `hf_device_map` before anything else happens)."""
    trainer = sys.modules.get("transformers.trainer")
    caller = caller_locals.get("self")
    if trainer is None or not isinstance(caller, getattr(trainer, "Trainer", ())):
        return
    if caller_locals.get("model") is editor or caller.__dict__.get("model") is editor:
        raise DeanError("Trainer(model=editor) is not supported: the Trainer would save checkpoints that "
                        "from_pretrained cannot load. Pass the model itself with the mask's callback: "
                        "Trainer(model=editor.get_base_model(), ..., callbacks=[DeanCallback(editor.masks[name])]) "
                        "(from dean_hf.callback import DeanCallback).")


class _ModelForward:
    """`editor.forward`: calls the wrapped model (its own hooks included) and shows that model's forward signature,
    which `Trainer` and pipelines read to choose the inputs they pass."""

    def __init__(self, editor: "DeanEditor"):
        self._editor = editor

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._editor.model(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._editor.model.forward)


class DeanEditor(ArtifactMixin, nn.Module):
    """Wrap a causal LM and apply named DEAN masks to it, in place and reversibly, with PEFT's API.

    Args:
        model: the model to edit (a transformers causal LM; also seen through torch.compile and PEFT).
        config: the default `DeanConfig` for `fit`.
        adapter_name: the default mask name.

    One mask is applied at a time. A second editor on the same model shares the first one's masks.
    """

    def __init__(self, model: nn.Module, config: Optional[DeanConfig] = None, adapter_name: str = "default"):
        if isinstance(model, DeanEditor):
            raise DeanError("this model is already wrapped by a DeanEditor: use that editor's add_adapter or "
                            "load_adapter.")
        if not isinstance(model, nn.Module):
            raise DeanError(f"DeanEditor needs a torch model, got a {type(model).__name__}.")
        if config is not None and not isinstance(config, DeanConfig):
            raise DeanError(f"config is a {type(config).__name__}, expected a DeanConfig.")
        super().__init__()
        self.model = model
        self._state: MaskState = state_for(model)
        if self._state.masks:
            logger.warning("this model already carries dean_hf masks %s (active: %r) from another editor: the new "
                           "editor shares them.", list(self._state.masks), self._state.active)
        self._default_name = adapter_name
        config = config or DeanConfig()
        if config.base_model_name_or_path is None:
            name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
            config = dataclasses.replace(config, base_model_name_or_path=name)
        self._default_config = config
        self.forward = _ModelForward(self)
        _register_with_pipelines()

    # ----------------------------------------------------------------- the wrapped model
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (the model itself)
        except AttributeError:
            pass
        if name in _UNSUPPORTED:
            raise UnsupportedError(f"DeanEditor does not support PEFT's {name!r}: {_UNSUPPORTED[name]}.")
        modules = self.__dict__.get("_modules", {})
        if "model" not in modules or name.startswith("__"):
            raise AttributeError(name)
        # Trainer.__init__ reads the model's attributes (hf_device_map, ...) before it trains: refuse there.
        _refuse_trainer(self, sys._getframe(1).f_locals)
        _register_with_pipelines()  # a pipeline reads model.device before it checks the model's class
        return getattr(modules["model"], name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's `generate`, with the active mask applied."""
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The wrapped model (masked in place while a mask is active), as PEFT's `get_base_model`."""
        return self.model

    @property
    def base_model(self) -> "DeanEditor":
        """The editor itself, so that `editor.base_model.model` is the wrapped causal LM as in PEFT (where
        `peft_model.base_model` is the tuner whose `.model` is the transformers model)."""
        return self

    def extra_repr(self) -> str:
        return f"masks={list(self._state.masks)}, active={self._state.active!r}"

    # ----------------------------------------------------------------- state, read-only
    @property
    def masks(self) -> Mapping[str, NeuronMask]:
        """The loaded masks by name (read-only)."""
        return MappingProxyType(self._state.masks)

    @property
    def peft_config(self) -> dict[str, DeanConfig]:
        """The DeanConfig of each loaded mask, by name (PEFT's `peft_config`)."""
        return dict(self._state.configs)

    configs = peft_config

    @property
    def dean_config(self) -> DeanConfig:
        """The config of the active mask, or the editor's default config (for `fit`) when none is active."""
        return self._state.configs.get(self._state.active, self._default_config) if self._state.active \
            else self._default_config

    active_peft_config = dean_config

    @property
    def active_adapter(self) -> Optional[str]:
        """Name of the applied mask, or None."""
        return self._state.active

    active_mask = active_adapter

    @property
    def active_adapters(self) -> list[str]:
        """The applied mask's name in a list (PEFT's form), empty when none is applied."""
        return [self._state.active] if self._state.active else []

    def mask_summary(self) -> str:
        """One line per loaded mask: weights zeroed of the weights of its modules, and which is active."""
        if not self._state.masks:
            return "no DEAN mask loaded"
        lines = []
        for name, mask in self._state.masks.items():
            mark = " (active)" if name == self._state.active else ""
            lines.append(f"mask {name!r}{mark}: zeroed weights: {hub.fraction_text(mask)} in {len(mask)} modules")
        return "\n".join(lines)

    def print_trainable_parameters(self) -> None:
        """PEFT's habit, with what it means for a mask: no trainable parameter is added (the count of the model's
        own trainable parameters is shown, as PEFT shows its adapter's), and how many weights each mask edits."""
        total = sum(p.numel() for p in self.model.parameters())
        edits = "; ".join(f"mask {n!r}{' (active)' if n == self._state.active else ''}: "
                          f"{'zeroes' if m.scale == 0 else f'scales by {m.scale:g}'} {hub.fraction_text(m)} weights"
                          for n, m in self._state.masks.items()) or "no DEAN mask loaded"
        print(f"trainable params: 0 (a DEAN mask adds none) || all params: {total:,} || {edits}")  # noqa: T201

    def print_mask_summary(self) -> None:
        """Print `mask_summary()` (as PEFT's `print_trainable_parameters`)."""
        print(self.mask_summary())  # noqa: T201 - printing is what the user asked for

    # ----------------------------------------------------------------- adding, switching, removing
    def add_adapter(self, adapter_name: str, mask: NeuronMask, config: Optional[DeanConfig] = None, *,
                    check_base_model: bool = True) -> None:
        """Register `mask` under `adapter_name`, checked against the model; not applied (see `set_adapter`)."""
        if isinstance(mask, DeanConfig):
            raise DeanError("add_adapter takes a NeuronMask: a DEAN mask is selected from data. Make one from a "
                            "DeanConfig with editor.fit(tokenizer, targets, general, adapter_name=...).")
        if not isinstance(mask, NeuronMask):
            raise DeanError(f"mask is a {type(mask).__name__}, expected a NeuronMask.")
        config = config or dataclasses.replace(self._default_config, base_model_fingerprint=None, mask_digest=None)
        self._state.check_changeable("adding a mask")
        if check_base_model:
            with self._state.disabled():
                check_fingerprint(config.base_model_fingerprint, self._state.modules_of(mask), mask)
        self._state.add(adapter_name, mask, config)

    add_mask = add_adapter

    def set_adapter(self, adapter_name: str) -> None:
        """Apply the mask `adapter_name` (the active one, if any, is restored first)."""
        self._state.activate(adapter_name)

    set_mask = set_adapter

    def delete_adapter(self, adapter_name: str) -> None:
        """Forget the mask `adapter_name` (restoring the weights first if it is active)."""
        self._state.delete(adapter_name)

    delete_mask = delete_adapter

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the original weights inside the block; the active mask is applied again on exit. Masks cannot be
        added, switched or removed inside the block (DeanError)."""
        with self._state.disabled():
            yield

    disable_mask = disable_adapter

    def unload(self) -> nn.Module:
        """The base model with its exact original weights; the editor's masks are forgotten."""
        self._state.clear(keep_edits=False)
        return self.model

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[Sequence[str]] = None) -> nn.Module:
        """The model with the active mask's zeros kept in its weights; the editor's masks are forgotten.

        `adapter_names` (PEFT's argument) may name one mask, which is applied first; masks do not stack.
        `progressbar` and `safe_merge` are accepted for PEFT compatibility (zeroing needs neither)."""
        if adapter_names is not None:
            names = list(adapter_names)
            if len(names) != 1:
                raise DeanError(f"adapter_names={quote(names)}: DEAN masks do not stack; merge exactly one.")
            if names[0] != self._state.active:
                self.set_adapter(names[0])
        if self._state.active is None:
            logger.warning("merge_and_unload with no active mask: the model is returned unchanged.")
        self._state.clear(keep_edits=True)
        return self.model

    # ----------------------------------------------------------------- fitting
    def fit(self, tokenizer: Any, targets: Mapping[str, Any], general: Any = None, *,
            adapter_name: Optional[str] = None, show_progress: bool = True,
            cache_dir: Optional[str | os.PathLike] = None) -> NeuronMask:
        """Score the model on each data set, select `(T_1 ∩ ... ∩ T_n) \\ G`, add the mask and apply it.

        `targets` maps names (e.g. "fairness", "privacy") to data, and `general` is the utility data: anything
        `dean_hf.data.load_records` takes (records, a CSV/JSONL/Parquet path, "embedded:fairness", a
        `datasets.Dataset`, a Hub id) with prompt/response columns. Every argument is checked before scoring.
        `cache_dir` keeps the scores there and reuses them for the same model, data and options."""
        from .pipeline import mask_and_config, score_datasets  # noqa: PLC0415 - keeps the editor light to import

        name = self._default_name if adapter_name is None else adapter_name
        self._check_new_name(name)
        if tokenizer is None or not callable(tokenizer):
            raise DeanError(f"tokenizer is a {type(tokenizer).__name__}, expected the model's tokenizer.")
        cfg = self._default_config
        general_name = cfg.general_dataset or "general"
        with self._state.disabled():
            scores = score_datasets(self.model, tokenizer, targets, general, cfg, show_progress=show_progress,
                                    cache_dir=cache_dir)
            general_scores = scores.pop(general_name) if general is not None else None
            sources = {**targets, **({general_name: general} if general is not None else {})}
            mask, config = mask_and_config(scores, general_scores, cfg, general_name=general_name, sources=sources)
            if config.base_model_fingerprint is None:
                fingerprint = weight_fingerprint(self._state.modules_of(mask))
                config = dataclasses.replace(config, base_model_fingerprint=fingerprint)
        self.add_adapter(name, mask, config, check_base_model=False)
        self.set_adapter(name)
        logger.info("DEAN mask %r: %s weights zeroed", name, hub.fraction_text(mask))
        return mask

    def _check_new_name(self, name: Any) -> None:
        self._state.check_new_name(name, "fit")
