"""Coupled-neuron selection: `(T_1 ∩ ... ∩ T_n) \\ G` per weight matrix, a pure function of scores.

Worked example of the reference code's defect (`legacy=True`). One matrix, k = 3, general set
G = {0, 2, 4}. Fairness top-3 F = {1, 2, 5}; privacy top-3 P = {2, 5, 8}.

- dean_hf: (F ∩ P) \\ G = {2, 5} \\ {0, 2, 4} = {5}.
- reference: sort each set, mark which entries are outside G, AND the marks position by position,
  and index the first set: F sorted [1, 2, 5] -> outside G [T, F, T]; P sorted [2, 5, 8] ->
  [F, T, T]; AND -> [F, F, T] -> F[[2]] = {5}. Here the answers agree by chance; with
  P = {3, 5, 9} the reference gives [T, F, T] & [T, T, T] -> {1, 5} although 1 is not in P:
  it selects weights that only one data set marks as important.

The reference keeps the indices of its first data set (`dataset1`), so the target order matters in legacy
mode: its `main.py` default is fairness first, while the command in its README passes privacy first. Pass
`targets` in the order you want to reproduce (`dean select --legacy --targets privacy,fairness` reproduces the
README's run). Three further details of legacy mode: the top-set size is the reference's `int(q * rows * cols)`
(not `floor(q * numel)`, which differs by one on some shapes); ties at the cut-off go to the lower index (the
reference's `torch.topk` leaves their order unspecified); and p and q that keep different numbers of weights are
refused, where the reference fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .errors import DeanError
from .logging import get_logger
from .mask import NeuronMask
from .scoring.scores import ImportanceScores, rank_order

logger = get_logger(__name__)
LARGE_FRACTION = 0.01  # a mask over this fraction of a matrix is far from DEAN's regime (the paper: q = 5e-7)


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1) or math.isnan(value):
        raise DeanError(f"{name}={value!r} is outside (0, 1]: it is the fraction of each weight matrix kept, "
                        "for example 5e-7 (the paper) or 1e-3.")
    return float(value)


def top_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (flat) of the k largest entries; ties broken by lower index. Deterministic."""
    flat = scores.reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    out[rank_order(flat, k)] = True
    return out


def _shape(scores: Mapping[str, torch.Tensor], module: str) -> tuple[int, ...]:
    shapes = getattr(scores, "shapes", None)
    return tuple(shapes[module]) if isinstance(shapes, Mapping) else tuple(scores[module].shape)


def _top(scores: Mapping[str, torch.Tensor], module: str, k: int, name: str) -> torch.Tensor:
    """Flat indices of the k highest scores of `module` (any order), on the scores' device."""
    if isinstance(scores, ImportanceScores):
        if not scores.is_sparse:
            _check_finite(scores[module], name, module)
        return scores.top(module, k)
    tensor = scores[module]
    _check_finite(tensor, name, module)
    return rank_order(tensor.reshape(-1), k)


def _check_finite(tensor: torch.Tensor, name: str, module: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise DeanError(f"scores {name!r} for {module!r} contain NaN or inf: score that data set again.")


def _flags(indices: torch.Tensor, numel: int) -> torch.Tensor:
    out = torch.zeros(numel, dtype=torch.bool, device=indices.device)
    out[indices] = True
    return out


def _reference_k(fraction: float, shape: tuple[int, ...]) -> int:
    """The reference code's top-set size: `int(fraction * rows * cols)`, multiplied left to right (a 3 x 10
    matrix at 0.7 gives 20 where floor(0.7 * 30) gives 21)."""
    value = fraction
    for dim in shape:
        value = value * dim
    return int(value)


def _legacy_module(target_sets: list[torch.Tensor], general: torch.Tensor) -> torch.Tensor:
    """The reference code's rule: AND position by position of 'sorted top-q index not in G'."""
    sorted_sets = [t.sort().values for t in target_sets]  # ascending flat indices, as the reference sorts them
    keep = torch.ones(sorted_sets[0].numel(), dtype=torch.bool, device=sorted_sets[0].device)
    for s in sorted_sets:
        if s.numel() != keep.numel():
            raise DeanError("legacy selection needs the same number of top weights from every target set.")
        keep &= ~torch.isin(s, general.to(s.device))
    return sorted_sets[0][keep]


def _warn_if_large(q: float, indices: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple]) -> None:
    """Warn when q, or the selection, covers more than LARGE_FRACTION of some matrix."""
    fractions = {m: indices[m].numel() / max(1, math.prod(shapes[m])) for m in indices}
    largest = max(fractions, key=fractions.get)
    if q <= LARGE_FRACTION and fractions[largest] <= LARGE_FRACTION:
        return
    total = sum(idx.numel() for idx in indices.values())
    touched = sum(1 for idx in indices.values() if idx.numel())
    logger.warning("q=%g lets the mask cover up to %.3g%% of each weight matrix: it masks %d weights in %d of %d "
                   "modules, at most %.3g%% of one matrix (%s). DEAN masks are meant to be tiny (the paper uses "
                   "q = 5e-7, a few weights per matrix); pass a smaller q unless you mean to ablate this much.",
                   q, 100 * q, total, touched, len(indices), 100 * fractions[largest], largest)


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
    if not modules:
        raise DeanError(f"scores {names[0]!r} hold no module: score the data set on a model with target modules.")
    for n in names[1:] + (["general"] if general is not None else []):
        other = targets[n] if n in targets else general
        if set(other) != set(modules):
            diff = sorted(set(other) ^ set(modules))[:5]
            raise DeanError(f"scores {n!r} cover other modules than {names[0]!r} (e.g. {diff}): "
                            "score every data set with the same model and target_modules.")
    indices, shapes = {}, {}
    nothing = []
    for module in modules:
        shape = _shape(targets[names[0]], module)
        numel = math.prod(shape)
        for n in names:
            if _shape(targets[n], module) != shape:
                raise DeanError(f"scores {n!r} for {module!r} have shape {_shape(targets[n], module)}, expected "
                                f"{shape}.")
        if general is not None and _shape(general, module) != shape:
            raise DeanError(f"general scores for {module!r} have shape {_shape(general, module)}, expected {shape}.")
        if legacy:  # the reference code's count, int(q * rows * cols), which rounds differently on some shapes
            k_target, k_general = _reference_k(q, shape), _reference_k(p, shape) if p is not None else 0
            if general is not None and k_general != k_target:
                raise DeanError(f"legacy=True reproduces the reference code, which fails when p and q keep different "
                                f"numbers of weights ({module!r}: {k_target} for q={q:g}, {k_general} for p={p:g}): "
                                "pass p equal to q, or leave legacy off.")
        else:
            k_target, k_general = math.floor(q * numel), math.floor(p * numel) if p is not None else 0
        if k_target == 0:
            nothing.append(module)
        sets = [_top(targets[n], module, k_target, n) for n in names]
        protected = _top(general, module, k_general, "general") if general is not None else sets[0][:0]
        if legacy:
            idx = _legacy_module(sets, protected)
        else:  # (T_1 ∩ ... ∩ T_n) \ G, as flags over the matrix on the scores' device
            chosen = _flags(sets[0], numel)
            for s in sets[1:]:
                chosen &= _flags(s.to(chosen.device), numel)
            chosen[protected.to(chosen.device)] = False
            idx = chosen.nonzero().squeeze(1)
        indices[module], shapes[module] = idx.to(torch.int64).cpu(), shape
    if len(nothing) == len(modules):
        smallest = min(math.prod(s) for s in shapes.values())
        logger.warning("q=%g selects nothing in any module (floor(q * numel) = 0 for every matrix; the smallest has "
                       "%d weights): use q >= %.3g to select at least one weight per matrix.", q, smallest,
                       1 / smallest)
    _warn_if_large(q, indices, shapes)
    metadata = {"targets": names, "general": general is not None, "q": q, "p": p, "legacy": legacy}
    return NeuronMask(indices, shapes, metadata)
