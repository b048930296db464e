"""A light fingerprint of a base model's target weights, to refuse masks made for another model."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .errors import DeanError

PROBES = 8


def _positions(numel: int) -> list[int]:
    # Spread over the matrix; deterministic, independent of dtype and device.
    return sorted({(i * 2654435761 + 7) % numel for i in range(PROBES)})


def weight_fingerprint(modules: Mapping[str, nn.Module]) -> dict[str, Any]:
    """Probe values of each module's weight at a few fixed positions (take it on the original weights)."""
    probes = {}
    for name, module in modules.items():
        flat = module.weight.detach().reshape(-1)
        probes[name] = {str(i): float(flat[i].float()) for i in _positions(flat.numel())}
    return {"probes": probes}


def check_fingerprint(fingerprint: Mapping[str, Any] | None, modules: Mapping[str, nn.Module],
                      masked: Mapping[str, torch.Tensor]) -> None:
    """Raise DeanError if the model's weights differ from those the fingerprint was taken on.

    Tolerant to dtype (a bf16 copy of the same weights passes); masked positions are ignored, so an
    already-edited copy of the base model passes too.
    """
    if not fingerprint:
        return
    probes = fingerprint.get("probes") if isinstance(fingerprint, Mapping) else None
    if not isinstance(probes, Mapping):
        raise DeanError("the mask's base_model_fingerprint is malformed; pass check_base_model=False to skip it.")
    bad = []
    for name, values in probes.items():
        if name not in modules or not isinstance(values, Mapping):
            continue  # names are checked separately, with a clearer message
        flat = modules[name].weight.detach().reshape(-1)
        masked_set = set(masked[name].tolist()) if name in masked and masked[name].numel() < 1_000_000 else set()
        for pos, expected in values.items():
            try:
                i, expected = int(pos), float(expected)
            except (TypeError, ValueError):
                raise DeanError("the mask's base_model_fingerprint is malformed; pass "
                                "check_base_model=False to skip it.") from None
            if i in masked_set or not 0 <= i < flat.numel():
                continue
            actual = float(flat[i].float())
            if not math.isclose(actual, expected, rel_tol=1e-2, abs_tol=1e-3):
                bad.append(name)
                break
    if bad:
        raise DeanError(f"this mask was made for other weights: {len(bad)} module(s) differ from the base model "
                        f"it was scored on (e.g. {bad[0]!r}). Load it onto its base model "
                        "(see base_model_name_or_path in dean_config.json), or pass check_base_model=False "
                        "if you know the weights are compatible.")
