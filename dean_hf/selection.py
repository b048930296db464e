"""Coupled-neuron selection: `(T_1 ∩ ... ∩ T_n) \\ G` per weight matrix, a pure function of scores.

Worked example of the reference code's defect (`legacy=True`). One matrix, k = 3, general set
G = {2}. Fairness top-3 F = {1, 2, 5}; privacy top-3 P = {2, 5, 8}.

- dean_hf: (F ∩ P) \\ G = {2, 5} \\ {2} = {5}.
- reference: sort each set, mark which entries are outside G, AND the marks position by position,
  and index the first set: F sorted [1, 2, 5] -> outside G [T, F, T]; P sorted [2, 5, 8] ->
  [F, T, T]; AND -> [F, F, T] -> F[[2]] = {5}. Here the answers agree by chance; with
  P = {3, 5, 9} the reference gives [T, F, T] & [T, T, T] -> {1, 5} although 1 is not in P:
  it selects weights that only one data set marks as important.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .errors import DeanError
from .logging import get_logger
from .mask import NeuronMask

logger = get_logger(__name__)


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1) or math.isnan(value):
        raise DeanError(f"{name}={value!r} is outside (0, 1]: it is the fraction of each weight matrix kept, "
                        "for example 5e-7 (the paper) or 1e-3.")
    return float(value)


def top_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (flat) of the k largest entries; ties broken by lower index. Deterministic."""
    flat = scores.reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k <= 0:
        return out
    if k >= flat.numel():
        return out.fill_(True)
    threshold = torch.topk(flat, k, sorted=False).values.min()
    out = flat > threshold
    need = k - int(out.sum())
    if need > 0:
        ties = (flat == threshold).nonzero().squeeze(1)[:need]
        out[ties] = True
    return out


def _legacy_module(target_sets: list[torch.Tensor], general: torch.Tensor) -> torch.Tensor:
    """The reference code's rule: AND position by position of 'sorted top-q index not in G'."""
    sorted_sets = [torch.nonzero(t).squeeze(1) for t in target_sets]  # ascending flat indices
    general_idx = torch.nonzero(general).squeeze(1)
    keep = torch.ones(sorted_sets[0].numel(), dtype=torch.bool)
    for s in sorted_sets:
        keep &= ~torch.isin(s, general_idx)
    return sorted_sets[0][keep]


def select_coupled_neurons(
    targets: Mapping[str, Mapping[str, torch.Tensor]],
    general: Mapping[str, torch.Tensor] | None = None,
    *,
    q: float,
    p: float | None = None,
    legacy: bool = False,
) -> NeuronMask:
    """Per weight matrix, the weights in the top-q of every target's scores but not the top-p of `general`.

    `targets` maps a data-set name (e.g. "fairness", "privacy") to its ImportanceScores; `general`
    is the utility scores (None: nothing is protected). The top sets hold `floor(q * numel)` and
    `floor(p * numel)` entries. `legacy=True` reproduces the reference code, defect included (see
    the module docstring).
    """
    q = _check_fraction("q", q)
    p = _check_fraction("p", p) if general is not None else None
    if not isinstance(targets, Mapping) or not targets:
        raise DeanError("targets is empty: pass a dict such as {'fairness': scores_f, 'privacy': scores_p}.")
    names = list(targets)
    modules = list(targets[names[0]])
    for n in names[1:] + (["general"] if general is not None else []):
        other = targets[n] if n in targets else general
        if set(other) != set(modules):
            diff = sorted(set(other) ^ set(modules))[:5]
            raise DeanError(f"scores {n!r} cover other modules than {names[0]!r} (e.g. {diff}): "
                            "score every data set with the same model and target_modules.")
    indices, shapes = {}, {}
    nothing = []
    for module in modules:
        shape = tuple(targets[names[0]][module].shape)
        numel = math.prod(shape)
        for n in names:
            t = targets[n][module]
            if tuple(t.shape) != shape:
                raise DeanError(f"scores {n!r} for {module!r} have shape {tuple(t.shape)}, expected {shape}.")
            if not bool(torch.isfinite(t).all()):
                raise DeanError(f"scores {n!r} for {module!r} contain NaN or inf: score that data set again.")
        k_target, k_general = math.floor(q * numel), math.floor(p * numel) if p is not None else 0
        if k_target == 0:
            nothing.append(module)
        sets = [top_k_flat(targets[n][module], k_target) for n in names]
        protected = top_k_flat(general[module], k_general) if general is not None else torch.zeros_like(sets[0])
        if legacy:
            idx = _legacy_module(sets, protected)
        else:
            chosen = sets[0]
            for s in sets[1:]:
                chosen = chosen & s
            idx = torch.nonzero(chosen & ~protected).squeeze(1)
        indices[module], shapes[module] = idx.to(torch.int64).cpu(), shape
    if len(nothing) == len(modules):
        smallest = min(math.prod(s) for s in shapes.values())
        logger.warning("q=%g selects nothing in any module (floor(q * numel) = 0 for every matrix; the smallest has "
                       "%d weights): use q >= %.3g to select at least one weight per matrix.", q, smallest,
                       1 / smallest)
    metadata = {"targets": names, "general": general is not None, "q": q, "p": p, "legacy": legacy}
    return NeuronMask(indices, shapes, metadata)
