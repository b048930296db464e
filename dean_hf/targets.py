"""Which modules of a model are scored and edited: PEFT-style `target_modules` matching."""

from __future__ import annotations

import re
from typing import Sequence, Union

from torch import nn

from .errors import DeanError
from .modules import conv1d_class, is_conv1d, is_target_type  # noqa: F401 - re-exported: the layer types scored
from .modules import named_weight_modules, output_head

TargetModules = Union[str, Sequence[str]]

# Named groups of module-name parts, as users of PEFT write them.
_GROUPS = {
    "mlp": ("mlp", "feed_forward", "ffn", "dense_h_to_4h", "dense_4h_to_h", "fc1", "fc2", "c_fc"),
    "self_attn": ("self_attn", "attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "query_key_value"),
}
_GROUPS["attention"] = _GROUPS["self_attn"]
_GROUPS["attn"] = _GROUPS["self_attn"]
SPECIAL = ("all-linear", *_GROUPS)


def _output_head_names(modules: dict[str, nn.Module], head: nn.Module | None) -> set[str]:
    return {name for name, module in modules.items()
            if module is head or name.split(".")[-1] in ("lm_head", "embed_out", "output_layer")}


def _matches(name: str, target_modules: TargetModules) -> bool:
    parts = name.split(".")
    if isinstance(target_modules, str):
        key = target_modules.lower()
        if key in _GROUPS:
            return any(p in _GROUPS[key] for p in parts)
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def find_target_modules(model: nn.Module, target_modules: TargetModules = "all-linear") -> dict[str, nn.Module]:
    """The modules selected by `target_modules`, by canonical name (see `dean_hf.modules`), in model order.

    `target_modules` is "all-linear" (every Linear/Conv1D but the output head), "mlp",
    "self_attn"/"attention", a list of name suffixes, or a regex matched against full names.
    Only `nn.Linear` and `Conv1D` modules are ever selected; the output head never by "all-linear".
    """
    if isinstance(target_modules, str) and not target_modules:
        raise DeanError("target_modules is empty: use 'all-linear', 'mlp', 'self_attn', a list of name suffixes or a regex.")
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
            raise DeanError(f"target_modules={target_modules!r}: expected a non-empty list of module-name suffixes.")
    elif target_modules.lower() not in SPECIAL:
        try:
            re.compile(target_modules)
        except re.error as err:
            raise DeanError(f"target_modules={target_modules!r} is not a valid regex ({err}); "
                            f"use one of {SPECIAL}, a list of name suffixes, or a regex.") from None
    linear_modules = named_weight_modules(model)
    heads = _output_head_names(linear_modules, output_head(model))
    found: dict[str, nn.Module] = {}
    for name, module in linear_modules.items():
        if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
            if name not in heads:
                found[name] = module
        elif _matches(name, target_modules):
            found[name] = module
    if not found:
        linear = list(linear_modules)
        shown = ", ".join(linear[:12]) + (f", ... ({len(linear)} in all)" if len(linear) > 12 else "")
        raise DeanError(f"target_modules={target_modules!r} matches no Linear/Conv1D module of this model. "
                        f"Its linear modules are: {shown or 'none'}. Use 'all-linear', 'mlp', 'self_attn', "
                        "name suffixes from that list, or a regex.")
    return found

