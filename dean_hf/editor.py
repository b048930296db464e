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
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional, Sequence

from torch import nn

from . import hub
from .config import DeanConfig
from .errors import DeanError, UnsupportedError, quote
from .fingerprint import check_fingerprint, weight_fingerprint
from .logging import get_logger
from .mask import NeuronMask
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
    "print_trainable_parameters": "a mask has no trainable parameters; print_mask_summary() shows what it zeroes",
    "get_nb_trainable_parameters": "a mask has no trainable parameters; see mask_summary()",
    "get_prompt": "DEAN is not prompt learning",
    "get_prompt_embedding_to_save": "DEAN is not prompt learning",
    "get_layer_status": "see mask_summary() and masks[name].counts_per_module()",
    "get_model_status": "see mask_summary()",
    "modules_to_save": "a mask saves no modules",
    "create_or_update_model_card": "save_pretrained writes the model card",
}


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


class DeanEditor(nn.Module):
    """Wrap a causal LM and apply named DEAN masks to it, in place and reversibly, with PEFT's API.

    Args:
        model: the model to edit (a transformers causal LM; also seen through torch.compile and PEFT).
        config: the default `DeanConfig` for `fit`.
        adapter_name: the default mask name.

    One mask is applied at a time. A second editor on the same model shares the first one's masks.
    """

    def __init__(self, model: nn.Module, config: Optional[DeanConfig] = None, adapter_name: str = "default"):
        if isinstance(model, DeanEditor):
            raise DeanError("this model is already wrapped by a DeanEditor: use that editor's add_adapter/load_adapter.")
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
        return getattr(modules["model"], name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's `generate`, with the active mask applied."""
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The wrapped model (masked in place while a mask is active), as PEFT's `get_base_model`."""
        return self.model

    @property
    def base_model(self) -> nn.Module:
        """The wrapped model."""
        return self.model

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
        self._state.check_changeable("fit")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise DeanError(f"adapter_name={quote(name)}: expected a non-empty name without '/'.")
        if name in self._state.masks:
            raise DeanError(f"a mask named {quote(name)} exists already: delete_adapter({name!r}) first or pass "
                            "another adapter_name.")

    # ----------------------------------------------------------------- artifacts
    def _config_for_save(self, adapter_name: str) -> DeanConfig:
        config = self._state.configs[adapter_name]
        if config.base_model_fingerprint is None:
            with self._state.disabled():
                fingerprint = weight_fingerprint(self._state.modules_of(self._state.masks[adapter_name]))
            config = dataclasses.replace(config, base_model_fingerprint=fingerprint)
            self._state.configs[adapter_name] = config
        return config

    def _selected(self, selected_adapters: Optional[Sequence[str]]) -> list[str]:
        if not self._state.masks:
            raise DeanError("no mask to save: add one (fit, add_adapter, load_adapter) first.")
        if selected_adapters is None:
            return list(self._state.masks)
        names = [selected_adapters] if isinstance(selected_adapters, str) else list(selected_adapters)
        unknown = [n for n in names if n not in self._state.masks]
        if unknown or not names:
            raise DeanError(f"selected_adapters={quote(names)}: the loaded masks are {list(self._state.masks)}.")
        return names

    def save_pretrained(self, save_directory: str | os.PathLike, selected_adapters: Optional[Sequence[str]] = None,
                        is_main_process: bool = True, *, evaluation: Optional[str] = None,
                        eval_results: Optional[list] = None, **kwargs: Any) -> Path:
        """Write each selected mask (default: all) as an artifact: "default" into `save_directory`, any other
        into `save_directory/<name>`, as PEFT saves adapters. Only dean_hf's files (`dean_config.json`,
        `dean_mask.safetensors`, and `README.md` unless another README is there) are written, each atomically;
        every other file in the folder is left as it was. Nothing is written where `is_main_process` is False."""
        if kwargs.pop("safe_serialization", True) is not True:
            raise DeanError("safe_serialization=False: dean_hf writes safetensors only (never pickle).")
        if kwargs:
            raise DeanError(f"save_pretrained got unexpected arguments {sorted(kwargs)}.")
        names = self._selected(selected_adapters)
        if Path(save_directory).is_file():
            raise DeanError(f"save_directory {quote(str(save_directory))} is a file, expected a folder.")
        # Every card is rendered (and every value checked) before any file is written.
        plans = []
        for name in names:
            config, mask = self._config_for_save(name), self._state.masks[name]
            card = hub.render_card(config, mask, evaluation=evaluation, eval_results=eval_results)
            plans.append((hub.artifact_folder(save_directory, name), config, mask, card))
        if is_main_process:
            for folder, config, mask, card in plans:
                hub.save_artifact(folder, config, mask, card=card)
        return Path(save_directory)

    @classmethod
    def from_pretrained(cls, model: nn.Module | str, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, *, revision: Optional[str] = None, subfolder: Optional[str] = None,
                        cache_dir: Optional[str] = None, local_files_only: bool = False, token: Optional[str] = None,
                        check_base_model: bool = True, **model_kwargs: Any) -> "DeanEditor":
        """Load a mask artifact from a folder or the Hub onto `model` and apply it (as `PeftModel.from_pretrained`).

        `model` is a model, or a name for `dean_hf.models.load_model` (then `model_kwargs`, e.g. `dtype`/
        `torch_dtype`, `device_map`, `model_revision`, are passed on). Every module name, shape and index is
        checked, and the mask against its digest, before any weight changes."""
        if is_trainable:
            raise DeanError("is_trainable=True: a DEAN mask has no trainable parameters.")
        if isinstance(model, (str, os.PathLike)):
            from .models import load_model

            model_revision = model_kwargs.pop("model_revision", None)
            model = load_model(str(model), revision=model_revision, **model_kwargs)
        elif model_kwargs:
            raise DeanError(f"{sorted(model_kwargs)} are options for loading a model by name; a model was given.")
        editor = cls(model, adapter_name=adapter_name)
        editor.load_adapter(model_id, adapter_name, revision=revision, subfolder=subfolder, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token, check_base_model=check_base_model)
        editor.set_adapter(adapter_name)
        return editor

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False, *,
                     revision: Optional[str] = None, subfolder: Optional[str] = None, cache_dir: Optional[str] = None,
                     local_files_only: bool = False, token: Optional[str] = None,
                     check_base_model: bool = True) -> NeuronMask:
        """Load a mask artifact under `adapter_name` without applying it (see `set_adapter`)."""
        if is_trainable:
            raise DeanError("is_trainable=True: a DEAN mask has no trainable parameters.")
        self._check_new_name(adapter_name)
        config, mask = hub.load_artifact(model_id, revision=revision, subfolder=subfolder, cache_dir=cache_dir,
                                         local_files_only=local_files_only, token=token)
        self.add_adapter(adapter_name, mask, config, check_base_model=check_base_model)
        return mask

    load_mask = load_adapter

    def push_to_hub(self, repo_id: str, *, selected_adapters: Optional[Sequence[str]] = None, merged: bool = False,
                    private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: Optional[str] = None, evaluation: Optional[str] = None,
                    revision: Optional[str] = None, create_pr: bool = False):
        """Upload the selected masks (default: all; "default" at the root, others in subfolders) in one commit,
        or with `merged=True` the model with the active mask applied, with its card."""
        upload_options = dict(private=private, token=token, revision=revision, create_pr=create_pr)
        if not merged:
            names = self._selected(selected_adapters)
            artifacts = {name: (self._config_for_save(name), self._state.masks[name]) for name in names}
            return hub.push_artifacts(repo_id, artifacts, commit_message=commit_message or f"Add DEAN mask(s) {names}",
                                      **upload_options)
        name = self._state.active
        if name is None:
            raise DeanError("merged=True pushes the weights with the active mask, and no mask is active: "
                            "call set_adapter(name) first.")
        config, mask = self._config_for_save(name), self._state.masks[name]
        card = hub.render_card(config, mask, repo_id=repo_id, merged=True, evaluation=evaluation)
        with tempfile.TemporaryDirectory() as tmp:
            hub.save_merged(self.model, tmp, card=card, overwrite=True)
            return hub.upload(tmp, repo_id, commit_message=commit_message or "Upload DEAN-edited model",
                              **upload_options)
