"""Save, load and push for `DeanEditor`, with PEFT's names and behaviour; the files themselves are `dean_hf.hub`'s.

As `huggingface_hub.ModelHubMixin` gives a model `save_pretrained` / `from_pretrained` / `push_to_hub`, this mixin
gives them to the editor: masks other than "default" live in subfolders named after them, every save writes only
dean_hf's files, and every load checks names, shapes, indices and the mask's digest before any weight changes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from torch import nn

from . import hub
from .config import DeanConfig
from .errors import DeanError, quote
from .fingerprint import weight_fingerprint
from .io import check_writable
from .mask import NeuronMask

# The class the mixin is given to (the editor): known here only as `cls`/`self`, so this module never imports it.
_Host = TypeVar("_Host", bound="ArtifactMixin")

_IGNORED_PEFT_OPTIONS = ("torch_device", "low_cpu_mem_usage", "autocast_adapter_dtype", "ephemeral_gpu_offload",
                         "key_mapping")


def _check_peft_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_IGNORED_PEFT_OPTIONS))
    if unknown:
        raise DeanError(f"load_adapter got unknown options {unknown}: it takes revision, subfolder, cache_dir, "
                        "local_files_only, token, check_base_model (and ignores PEFT's "
                        f"{list(_IGNORED_PEFT_OPTIONS)}).")


class ArtifactMixin:
    """`save_pretrained`, `from_pretrained`, `load_adapter` and `push_to_hub` over the editor's mask state.

    As `huggingface_hub.ModelHubMixin`, it knows its host only through `cls` and `self`: the host class is built
    as `cls(model, adapter_name=...)` and provides `_state` (a `MaskState`), `model`, `add_adapter`, `set_adapter`
    and `_check_new_name`."""

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
                        eval_results: Optional[list] = None, save_format: str = "dean", **kwargs: Any) -> Path:
        """Write each selected mask (default: all) as an artifact: "default" into `save_directory`, any other
        into `save_directory/<name>`, as PEFT saves adapters. Only dean_hf's files (`dean_config.json`,
        `dean_mask.safetensors`, and `README.md` unless another README is there) are written, each atomically;
        every other file in the folder is left as it was. Every mask's files are computed and every folder checked
        before the first file is written, so a save refused for one mask writes none. Nothing is written where
        `is_main_process` is False.

        `save_format="peft"` writes each mask instead as a standard PEFT adapter (PEFT's SHiRA tuner:
        `adapter_config.json`, `adapter_model.safetensors`, README.md) that `peft.PeftModel.from_pretrained(base,
        dir)` loads without dean_hf, with the same logits and merged weights (bit for bit for zeroing masks, and
        for scaled masks in bf16/fp16; float32 with `0 < scale < 0.5`: within one unit in the last place of each
        original weight). Limits: `torch.nn.Linear` modules only (GPT-2's
        `Conv1D` is refused), and the adapter holds the delta from the current base weights, so it fits that base
        model only; see `dean_hf.peft_export`."""
        if kwargs.pop("safe_serialization", True) is not True:
            raise DeanError("safe_serialization=False: dean_hf writes safetensors only (never pickle).")
        if kwargs:
            raise DeanError(f"save_pretrained got unexpected arguments {sorted(kwargs)}.")
        if save_format not in ("dean", "peft"):
            raise DeanError(f"save_format={quote(save_format)}: expected 'dean' (dean_hf's artifact, the default) or "
                            "'peft' (a PEFT SHiRA adapter that plain PEFT loads).")
        names = self._selected(selected_adapters)
        if Path(save_directory).is_file():
            raise DeanError(f"save_directory {quote(str(save_directory))} is a file, expected a folder.")
        if save_format == "peft":
            return self._save_peft(save_directory, names, is_main_process)
        # Every card is rendered (and every value checked) before any file is written.
        plans = []
        for name in names:
            config, mask = self._config_for_save(name), self._state.masks[name]
            card = hub.render_card(config, mask, evaluation=evaluation, eval_results=eval_results)
            plans.append((hub.artifact_folder(save_directory, name), config, mask, card))
        if is_main_process:
            for folder, *_ in plans:  # every folder usable before the first is written
                check_writable(folder, "artifact folder")
            for folder, config, mask, card in plans:
                hub.save_artifact(folder, config, mask, card=card)
        return Path(save_directory)

    def _save_peft(self, save_directory: str | os.PathLike, names: Sequence[str], is_main_process: bool) -> Path:
        from .peft_export import prepare_peft_adapter

        if not is_main_process:  # the other processes neither compute nor check: the main one writes
            return Path(save_directory)
        with self._state.disabled():  # the delta is taken from the original weights
            # every adapter computed and its folder checked before the first file is written
            adapters = [prepare_peft_adapter(hub.artifact_folder(save_directory, name),
                                             self._state.modules_of(self._state.masks[name]),
                                             self._state.masks[name], self._config_for_save(name)) for name in names]
        for adapter in adapters:
            adapter.write()
        return Path(save_directory)

    @classmethod
    def from_pretrained(cls: type[_Host], model: nn.Module | str, model_id: str | os.PathLike,
                        adapter_name: str = "default", is_trainable: bool = False, *, revision: Optional[str] = None,
                        subfolder: Optional[str] = None, cache_dir: Optional[str] = None,
                        local_files_only: bool = False, token: Optional[str] = None, check_base_model: bool = True,
                        **model_kwargs: Any) -> _Host:
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
                     check_base_model: bool = True, **peft_options: Any) -> NeuronMask:
        """Load a mask artifact under `adapter_name` without applying it (see `set_adapter`). PEFT's loading
        options that mean nothing for a mask (`torch_device`, `low_cpu_mem_usage`, `autocast_adapter_dtype`,
        `ephemeral_gpu_offload`) are accepted and ignored: the mask goes where each weight is."""
        _check_peft_options(peft_options)
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
