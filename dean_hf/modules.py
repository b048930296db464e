"""One module-name resolver for the editor, scoring and the callback, and the layer types dean_hf scores.

Mask and score files name modules as they are named in the plain transformers model
(`model.layers.0.mlp.up_proj`). Users hold that model wrapped in other ways: `torch.compile` (`_orig_mod.`),
PEFT (`base_model.model.` and LoRA's `base_layer`), DistributedDataParallel (`module.`), or a `DeanEditor`
(`model.`). Every wrapper is seen through here, so a mask made on one form applies to all of them.
"""

from __future__ import annotations

import inspect
from typing import Iterable

from torch import nn

from .errors import DeanError, quote

# Prefixes that wrappers put in front of the plain model's module names, outermost first.
_PREFIXES = ("_orig_mod.", "module.", "base_model.model.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside `torch.compile`, DDP, PEFT and DeanEditor wrappers (the model itself if none)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = None
        if hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
            inner = model._orig_mod  # torch.compile's OptimizedModule
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"):
            inner = model.module
        elif type(model).__module__.startswith("peft."):  # PeftModel, or a tuner model such as LoraModel
            inner = model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "model", None)
        elif type(model).__name__ == "DeanEditor":
            inner = model.get_base_model()
        if inner is None or inner is model:
            break
        model = inner
    return model


def canonical_name(name: str) -> str:
    """A module name as the plain model names it: wrapper prefixes and LoRA's `.base_layer` removed."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return ".".join(part for part in name.split(".") if part != "base_layer")


def conv1d_class() -> type | None:
    """transformers' GPT-2 style `Conv1D`, or None if transformers does not have it."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        return None
    return Conv1D


def is_target_type(module: nn.Module) -> bool:
    """True for the layer types dean_hf scores: `nn.Linear` and transformers' `Conv1D`."""
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' `Conv1D`, whose weight is stored (in_features, out_features)."""
    conv1d = conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def _is_adapter_part(name: str) -> bool:
    return any(part.startswith(("lora_", "dean_")) for part in name.split("."))


def named_weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every `nn.Linear` / `Conv1D` of `model` by canonical name, in model order, seen through wrappers.

    A PEFT LoRA layer is represented by its base layer; the adapters' own small layers are left out."""
    found: dict[str, nn.Module] = {}
    for name, module in unwrap_model(model).named_modules():
        if _is_adapter_part(name) or not is_target_type(module):
            continue
        found.setdefault(canonical_name(name), module)
    return found


def resolve_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """The modules of `model` named by `names` (canonical names, as in masks and score files)."""
    available = named_weight_modules(model)
    out, missing = {}, []
    for name in names:
        module = available.get(canonical_name(name))
        if module is None:
            missing.append(name)
        else:
            out[name] = module
    if missing:
        linear = list(available)
        shown = ", ".join(linear[:6]) + (f", ... ({len(linear)} in all)" if len(linear) > 6 else "")
        raise DeanError(f"{len(missing)} module(s) are not Linear/Conv1D modules of this "
                        f"{type(unwrap_model(model)).__name__} (e.g. {quote(missing[0])}); its linear modules are: "
                        f"{shown or 'none'}. The mask or scores were made for another architecture: load them onto "
                        "their base model.")
    return out


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated decoder blocks, in order: the ModuleList whose entries are of the model's
    `_no_split_modules` classes (transformers names its blocks there), else the longest ModuleList."""
    plain = unwrap_model(model)
    lists = [m for m in plain.modules() if isinstance(m, nn.ModuleList) and len(m)]
    classes = set(getattr(plain, "_no_split_modules", None) or [])
    named = [m for m in lists if type(m[0]).__name__ in classes]
    candidates = named or lists
    return list(max(candidates, key=len)) if candidates else []


def keeps_logits(model: nn.Module) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (recent transformers causal LMs do)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output embeddings (`lm_head`), or None."""
    plain = unwrap_model(model)
    get = getattr(plain, "get_output_embeddings", None)
    return get() if callable(get) else None


def is_tied_head(model: nn.Module, module: nn.Module) -> bool:
    """True if `module` is the output head and shares its weight with the input embeddings."""
    plain = unwrap_model(model)
    head = output_head(plain)
    get_in = getattr(plain, "get_input_embeddings", None)
    embeddings = get_in() if callable(get_in) else None
    if head is None or embeddings is None or module is not head:
        return False
    w_out, w_in = getattr(head, "weight", None), getattr(embeddings, "weight", None)
    if w_out is None or w_in is None:
        return False
    return w_out is w_in or (w_out.device.type != "meta" and w_out.data_ptr() == w_in.data_ptr())
