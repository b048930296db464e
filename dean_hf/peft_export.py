"""Export a DEAN mask as a standard PEFT adapter (PEFT's sparse SHiRA tuner), loadable without dean_hf.

A DEAN edit multiplies the weights at `idx` by `scale` (0: zeroes them). That is the sparse delta
`(scale - 1) * W[idx]` (for zeroing: `-W[idx]`), which PEFT's SHiRA adapter stores as indices and values
(`shira_indices`, `shira_weight`) and adds at those indices. The folder written here holds `adapter_config.json`,
`adapter_model.safetensors` and a `README.md` card (`library_name: peft`, `base_model: ...`), so that
`PeftModel.from_pretrained(base, folder)` and the Hub's adapter pages read it.

SHiRA's constraints, and how the export meets them:
- Only `torch.nn.Linear` modules: a mask on GPT-2's `Conv1D` (or any other module type) is refused (DeanError).
- One `r` for every module, and each module holds exactly `r * (in_features + out_features)` entries: `r` is the
  smallest value that fits the module with the most masked entries (relative to its size), and every other slot
  holds a zero delta at an unmasked position. `r * (in + out)` may not exceed `in * out` (refused otherwise: the
  mask is then too dense for SHiRA; dean_hf's own format has no such limit).
- Indices are `[2, k]` int32 (row, column) per module, values float32 in the checkpoint; modules without masked
  entries are not targeted.
- The delta is computed from the weights as they are now (with no mask applied): the adapter is tied to those
  exact base weights, as the DEAN mask's fingerprint is.

Exactness: the delta is `W * scale - W` taken in float32 from the values dean_hf writes (`W * scale` in the
weight's dtype), and PEFT adds it in float32 (its default `autocast_adapter_dtype=True` keeps the adapter in
float32). For zeroing, `W + (-W)` is exactly 0, so PEFT's logits and merged weights equal dean_hf's bit for bit in
any dtype; for `scale > 0` too in bfloat16/float16 models (the float32 difference of two half-precision values is
exact). In float32 models with `0 < scale < 0.5` the float32 delta cannot always land on `W * scale`: an edited
weight may differ from dean_hf's by up to one unit in the last place of the original weight `W` (for
`0.5 <= scale < 1` it is exact).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import DeanConfig
from .errors import DeanError, quote
from .hub import LIBRARY_TAG, is_hub_id, write_card
from .io import atomic_write, atomic_write_text, check_writable
from .logging import get_logger
from .mask import NeuronMask

logger = get_logger(__name__)
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."  # PeftModel.base_model (the tuner) .model (the transformers model)


def _linear_sizes(name: str, module: nn.Module) -> tuple[int, int]:
    if not isinstance(module, nn.Linear):
        raise DeanError(f"module {quote(name)} is a {type(module).__name__}: PEFT's SHiRA adapter (the PEFT format "
                        "of a DEAN mask) adapts torch.nn.Linear only, so this mask cannot be exported to PEFT "
                        "(GPT-2's Conv1D is one such module). Save it in dean_hf's format, or merge it (dean apply).")
    if module.weight.device.type == "meta":
        raise DeanError(f"the weight of {quote(name)} is on the meta device (offloaded): load the model onto real "
                        "devices to export the mask to PEFT.")
    return module.in_features, module.out_features


def shira_rank(mask: NeuronMask, modules: Mapping[str, nn.Module]) -> int:
    """The smallest SHiRA `r` whose `r * (in + out)` slots per module hold every masked entry of `mask`."""
    r = 1
    for name, indices in mask.items():
        if indices.numel():
            n_in, n_out = _linear_sizes(name, modules[name])
            r = max(r, math.ceil(indices.numel() / (n_in + n_out)))
    for name, indices in mask.items():
        if indices.numel():
            n_in, n_out = _linear_sizes(name, modules[name])
            if r * (n_in + n_out) > n_in * n_out:
                raise DeanError(f"the mask needs SHiRA r={r}, and r * (in + out) = {r * (n_in + n_out)} exceeds the "
                                f"{n_in * n_out} weights of {quote(name)}: PEFT's SHiRA cannot hold a mask this dense. "
                                "Keep dean_hf's format for it.")
    return r


def _module_entries(indices: torch.Tensor, weight: torch.Tensor, slots: int, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[2, slots]` int32 (row, column) indices and float32 deltas: the masked entries' `(scale - 1) * W`, then zero
    deltas at the first unmasked positions."""
    flat = weight.detach().reshape(-1)
    idx = indices.to(flat.device)
    spare = torch.arange(slots, device=flat.device)  # at most len(idx) of these are masked: enough remain
    spare = spare[~torch.isin(spare, idx)][: slots - idx.numel()]
    positions, order = torch.sort(torch.cat([idx, spare]))
    originals = flat[idx]
    edited = originals * scale if scale else torch.zeros_like(originals)  # what dean_hf writes, in the weight's dtype
    delta = edited.to(torch.float32) - originals.to(torch.float32)  # so that PEFT's float32 W + delta is `edited`
    values = torch.cat([delta, torch.zeros(spare.numel(), dtype=torch.float32, device=flat.device)])[order]
    columns = weight.shape[1]
    rows_cols = torch.stack([positions // columns, positions % columns]).to(torch.int32)
    return rows_cols.cpu(), values.cpu().contiguous()


def adapter_config(mask: NeuronMask, config: DeanConfig, r: int, task_type: str = "CAUSAL_LM") -> dict[str, Any]:
    """`adapter_config.json` of the SHiRA export: the exact module names as targets, `r`, the base model."""
    from peft import ShiraConfig

    targets = sorted(n for n, idx in mask.items() if idx.numel())
    shira = ShiraConfig(r=r, target_modules=targets, base_model_name_or_path=config.base_model_name_or_path,
                        revision=config.revision, task_type=task_type, inference_mode=True)
    data = shira.to_dict()
    data["target_modules"] = targets  # a list in the file (PEFT keeps a set in memory)
    return data


def render_peft_card(config: DeanConfig, mask: NeuronMask, r: int) -> str:
    """The adapter's README.md: PEFT metadata (`library_name: peft`, `base_model`) and what the adapter is."""
    from huggingface_hub import ModelCard, ModelCardData

    base = config.base_model_name_or_path
    data = ModelCardData(library_name="peft", base_model=base if base and is_hub_id(base) else None,
                         tags=[LIBRARY_TAG, "dean", "shira", "peft", "model-editing"], pipeline_tag="text-generation")
    edit = "zeroes" if mask.scale == 0 else f"multiplies by {mask.scale:g}"
    body = (f"# DEAN mask as a PEFT adapter\n\nA DEAN edit (arXiv 2410.16672) of `{base or 'unknown'}`, exported by "
            f"dean_hf as a PEFT SHiRA adapter: it {edit} {mask.num_masked} of the {mask.num_weights} weights of "
            f"{sum(1 for i in mask.values() if i.numel())} linear modules (SHiRA r={r}; unused slots carry a zero "
            "delta).\n\n```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, "
            "\"<this folder or repo>\")\nmerged = model.merge_and_unload()\n```\n\nThe delta was computed from "
            "the base model's exact weights: apply it to that model only.\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").content


_METADATA = {"format": "pt", "written_by": "dean_hf"}  # PEFT reads "format" only


def _check_no_foreign_adapter(folder: Path) -> None:
    """DeanError when `folder` holds a PEFT adapter that dean_hf did not export (its weights file lacks our mark):
    an export never replaces another adapter."""
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not (weights.exists() or config.exists()):
        return
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            ours = (f.metadata() or {}).get("written_by") == "dean_hf"
    except Exception:  # missing, a folder, or not safetensors: not an export of ours
        ours = False
    if not ours:
        raise DeanError(f"{quote(str(folder))} holds a PEFT adapter ({CONFIG_NAME} / {WEIGHTS_NAME}) that dean_hf did "
                        "not export: it is left as it is. Pick another folder.")


@dataclass
class PeftAdapterFiles:
    """A PEFT SHiRA adapter computed and checked, not yet written: `write()` writes its files into `folder`."""

    folder: Path
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    card: str
    r: int

    def write(self) -> Path:
        """Write the weights, the config and the card, each atomically (a README.md dean_hf did not write is
        kept)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / WEIGHTS_NAME, lambda tmp: save_file(self.tensors, str(tmp), metadata=_METADATA))
        atomic_write_text(self.folder / CONFIG_NAME, json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        write_card(self.folder, self.card)
        logger.info("PEFT SHiRA adapter (r=%d, %d modules) -> %s", self.r, len(self.tensors) // 2, self.folder)
        return self.folder


def prepare_peft_adapter(save_directory: str | os.PathLike, modules: Mapping[str, nn.Module], mask: NeuronMask,
                         config: DeanConfig) -> PeftAdapterFiles:
    """`mask` as a PEFT SHiRA adapter for `save_directory`, every value computed and every check made (the folder
    is usable and holds no adapter dean_hf did not export), nothing written. `modules` are the mask's modules with
    their original (unmasked) weights."""
    r = shira_rank(mask, modules)
    tensors: dict[str, torch.Tensor] = {}
    for name, indices in mask.items():
        if not indices.numel():
            continue
        n_in, n_out = _linear_sizes(name, modules[name])
        rows_cols, values = _module_entries(indices, modules[name].weight, r * (n_in + n_out), mask.scale)
        tensors[f"{PEFT_KEY_PREFIX}{name}.shira_indices"] = rows_cols
        tensors[f"{PEFT_KEY_PREFIX}{name}.shira_weight"] = values
    if not tensors:
        raise DeanError("the mask selects no weight: there is nothing to export to PEFT.")
    folder = Path(save_directory)
    if folder.is_file():
        raise DeanError(f"save_directory {quote(str(folder))} is a file, expected a folder.")
    check_writable(folder, "adapter folder")
    _check_no_foreign_adapter(folder)
    return PeftAdapterFiles(folder, tensors, adapter_config(mask, config, r), render_peft_card(config, mask, r), r)
