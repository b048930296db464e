"""A light fingerprint of a base model's target weights, to refuse masks made for another model.

The fingerprint is `{"probes": {module name: {"<flat index>": value}}}`: a few weight values per module,
taken at fixed positions on the original weights and compared, with a dtype-tolerant margin, on load."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch
from torch import nn

from .errors import DeanError, quote
from .logging import get_logger
from .offload import readable

logger = get_logger(__name__)
PROBES = 8
_MAX_MODULES = 1_000_000
_MAX_NAME = 4096
_MAX_PROBES = 1024  # per module; this version writes PROBES
_POSITION = re.compile(r"0|[1-9]\d{0,18}", re.ASCII)  # a canonical decimal int below 10**19
_MAX_POSITION = 2 ** 63 - 1  # positions become an int64 tensor
_SKIP = "pass check_base_model=False to load without the base-model check"


def _positions(numel: int) -> list[int]:
    # Spread over the matrix; deterministic, independent of dtype and device.
    return sorted({(i * 2654435761 + 7) % numel for i in range(PROBES)}) if numel > 0 else []


def _malformed(where: str, value: Any, expected: str) -> DeanError:
    return DeanError(f"base_model_fingerprint{where}={quote(value)}: expected {expected}. dean_hf writes this "
                     "field itself, so dean_config.json is corrupt or was edited: save the artifact again, or set "
                     "base_model_fingerprint to null to load it without the base-model check.")


def validate_fingerprint(fingerprint: Any) -> None:
    """Raise DeanError unless `fingerprint` is `{"probes": {module: {"<int>": finite float}}}` exactly."""
    if not isinstance(fingerprint, Mapping) or set(fingerprint) != {"probes"}:
        raise _malformed("", fingerprint, 'an object with the one key "probes"')
    probes = fingerprint["probes"]
    if not isinstance(probes, Mapping) or len(probes) > _MAX_MODULES:
        raise _malformed("['probes']", probes, "an object of module name -> probe values")
    for name, values in probes.items():
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
            raise _malformed("['probes'] key", name, "a module name")
        where = f"['probes'][{quote(name, 60)}]"
        if not isinstance(values, Mapping) or len(values) > _MAX_PROBES:
            raise _malformed(where, values, f"an object of at most {_MAX_PROBES} \"<flat index>\": value entries")
        for pos, value in values.items():
            if not isinstance(pos, str) or not _POSITION.fullmatch(pos) or int(pos) > _MAX_POSITION:
                raise _malformed(f"{where} key", pos, "a flat index written as a decimal string, e.g. \"7\", "
                                 f"at most {_MAX_POSITION} (2**63 - 1)")
            if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
                raise _malformed(f"{where}[{pos!r}]", value, "a finite float (a weight value)")


def _readable(name: str, weight: torch.Tensor) -> torch.Tensor:
    """`weight` flattened, or DeanError if its values cannot be read (meta device: offloaded or empty init)."""
    if weight.device.type == "meta":
        raise DeanError(f"the weight of {quote(name)} is on the meta device (offloaded by accelerate, or made under "
                        "init_empty_weights), so its values cannot be read to fingerprint or check the base model. "
                        "Load the weights onto a real device (device_map='cpu' or a GPU, without disk offload), "
                        f"or {_SKIP}.")
    return weight.detach().reshape(-1)


def weight_fingerprint(modules: Mapping[str, nn.Module]) -> dict[str, Any]:
    """Probe values of each module's weight at a few fixed positions (take it on the original weights)."""
    probes = {}
    for name, module in modules.items():
        with readable(module):  # accelerate-offloaded weights are loaded to the CPU for the read
            flat = _readable(name, module.weight)
            positions = _positions(flat.numel())
            values = flat[torch.tensor(positions, dtype=torch.int64, device=flat.device)].float().cpu().tolist()
        probes[name] = {str(i): float(v) for i, v in zip(positions, values)}  # one device read per module
    return {"probes": probes}


def check_fingerprint(fingerprint: Mapping[str, Any] | None, modules: Mapping[str, nn.Module],
                      masked: Mapping[str, torch.Tensor]) -> None:
    """Raise DeanError if the model's weights differ from those the fingerprint was taken on.

    Tolerant to dtype (a bf16 copy of the same weights passes); masked positions are ignored, so an
    already-edited copy of the base model passes too. A missing (None or empty) fingerprint, or one of which
    no probe can be compared, is logged as a warning: the base model is then not checked.
    """
    if fingerprint is None or (isinstance(fingerprint, Mapping) and not fingerprint):
        logger.warning("the mask has no base_model_fingerprint (an old or hand-made artifact): it cannot be checked "
                       "against its base model. Make sure the model is the one it was made for (see "
                       "base_model_name_or_path), or save the artifact again from the base model to add one.")
        return
    validate_fingerprint(fingerprint)
    bad, compared = [], 0
    for name, values in fingerprint["probes"].items():
        if name not in modules or not values:
            continue  # names are checked separately, with a clearer message
        positions = torch.tensor([int(p) for p in values], dtype=torch.int64)
        expected = torch.tensor(list(values.values()), dtype=torch.float64)
        with readable(modules[name]):  # accelerate-offloaded weights are loaded to the CPU for the read
            flat = _readable(name, modules[name].weight)
            keep = positions < flat.numel()
            if name in masked:
                keep &= ~torch.isin(positions, masked[name].to("cpu", torch.int64))
            positions, expected = positions[keep], expected[keep]
            if not positions.numel():
                continue
            actual = flat[positions.to(flat.device)].double().cpu()  # one device read per module
        compared += positions.numel()
        close = (actual - expected).abs() <= torch.maximum(1e-2 * torch.maximum(actual.abs(), expected.abs()),
                                                           torch.tensor(1e-3, dtype=torch.float64))
        if not bool(close.all()):
            bad.append(name)
    if bad:
        raise DeanError(f"this mask was made for other weights: {len(bad)} module(s) differ from the base model "
                        f"it was scored on (e.g. {quote(bad[0])}). Load it onto its base model "
                        "(see base_model_name_or_path in dean_config.json), or pass check_base_model=False "
                        "if you know the weights are compatible.")
    if compared == 0:
        logger.warning("no probe of the mask's base_model_fingerprint falls on an unmasked weight of this model's "
                       "masked modules: the base model could not be checked.")
