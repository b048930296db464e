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

Two generalisations share the same per-matrix rule. `granularity="neuron"` ranks whole neurons (rows or columns of
a weight matrix, see `neuron_axis`) instead of single weights. `select_by_expression` evaluates any set
expression over named score sets, such as the contrastive
`(unsafe_fairness & unsafe_privacy) - (safe_fairness | safe_privacy | general)`; `select_coupled_neurons(targets,
general)` is the expression `t_1 & ... & t_n - general`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Optional

import torch

from .expression import MAX_EXPRESSION_DEPTH, expression_names, parse, run, syntax_error  # noqa: F401 - re-exported
from .errors import DeanError, quote
from .logging import get_logger
from .mask import NeuronMask, validate_scale
from .scoring.scores import ImportanceScores, rank_order

logger = get_logger(__name__)
LARGE_FRACTION = 0.01  # a mask over this fraction of a matrix is far from DEAN's regime (the paper: q = 5e-7)
GRANULARITIES = ("weight", "neuron")
# A neuron is an input column of these (the hidden units of an MLP's down projection), an output row of the others.
DOWN_PROJECTIONS = ("down_proj", "fc2", "w2")
# transformers' Conv1D layers (GPT-2, OpenAI GPT) store their weight (in_features, out_features).
CONV1D_NAMES = ("c_attn", "c_fc", "c_proj")
_GENERAL = ("general",)  # select_coupled_neurons' key of the general set: no target name can be equal to it


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1) or math.isnan(value):
        raise DeanError(f"{name}={value!r} is outside (0, 1]: it is the fraction of each weight matrix kept, "
                        "for example 5e-7 (the paper) or 1e-3.")
    return float(value)


def _check_granularity(granularity: Any) -> str:
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise DeanError(f"granularity={quote(granularity)}: expected one of {list(GRANULARITIES)} ('weight' ranks "
                        "single weights, as DEAN does; 'neuron' ranks whole neurons).")
    return granularity


def top_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (flat) of the k largest entries; ties broken by lower index. Deterministic."""
    flat = scores.reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    out[rank_order(flat, k)] = True
    return out


def _label(key: Hashable) -> str:
    return "general" if key == _GENERAL else str(key)


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


# ----------------------------------------------------------------------------------------------- neurons
def is_down_projection(module: str) -> bool:
    """True for an MLP's down projection (`down_proj`, `fc2`, `w2`, and `c_proj` under an `mlp`), whose neurons
    are its input columns."""
    parts = module.split(".")
    return parts[-1] in DOWN_PROJECTIONS or (parts[-1] == "c_proj" and len(parts) > 1 and "mlp" in parts[-2])


def neuron_axis(module: str, transposed: bool = False) -> int:
    """The axis of `module`'s stored weight along which its neurons lie (each index of that axis is one neuron).

    A neuron is an output row of a layer stored (out, in) (`nn.Linear`: up/gate/attention projections) and an
    input column of a down projection: the rows of up_proj/gate_proj and the columns of down_proj that belong to
    one hidden unit. A `transposed` layer (transformers' Conv1D, stored (in, out)) swaps the two."""
    return int(is_down_projection(module) != bool(transposed))


def _layouts(modules: list[str], shapes: Mapping[str, tuple[int, ...]], granularity: str,
             transposed: Optional[Iterable[str]]) -> dict[str, Optional[int]]:
    """Per module the neuron axis of its weight, or None where single weights are the units."""
    if granularity == "weight":
        return {m: None for m in modules}
    if transposed is None:
        stored_in_out = {m for m in modules if m.rsplit(".", 1)[-1] in CONV1D_NAMES}
    elif isinstance(transposed, (str, bytes)) or not isinstance(transposed, Iterable):
        raise DeanError(f"transposed={quote(transposed)}: expected a list of module names (the modules whose weight "
                        "is stored (in_features, out_features), as transformers' Conv1D stores it).")
    else:
        stored_in_out = set(transposed)
    not_2d = [m for m in modules if len(shapes[m]) != 2]
    if not_2d:
        raise DeanError(f"granularity='neuron' needs 2-D weight matrices; {quote(not_2d[0])} has shape "
                        f"{shapes[not_2d[0]]}: leave it out of target_modules, or use granularity='weight'.")
    return {m: neuron_axis(m, m in stored_in_out) for m in modules}


def _units(shape: tuple[int, ...], axis: Optional[int]) -> int:
    """How many units a matrix has: weights (axis None) or neurons along `axis`."""
    return math.prod(shape) if axis is None else shape[axis]


def _top_units(scores: Mapping[str, torch.Tensor], module: str, k: int, name: str, axis: Optional[int],
               numel: int) -> torch.Tensor:
    """Flags over the units of `module` (weights, or neurons along `axis`): its k highest-scored ones. A neuron's
    score is the sum of its weights' scores."""
    if axis is None:
        return _flags(_top(scores, module, k, name), numel)
    if isinstance(scores, ImportanceScores) and scores.is_sparse:
        raise DeanError(f"granularity='neuron' ranks whole neurons by the sum of their weights' scores, which needs "
                        f"dense scores; the scores {name!r} keep only the top keep={scores.keep:g} of each matrix. "
                        "Score with keep=1 (DeanConfig(keep=1), `dean score --keep 1`), or use granularity='weight'.")
    dense = scores[module]
    _check_finite(dense, name, module)
    per_neuron = dense.sum(dim=1 - axis, dtype=torch.float64)
    return _flags(rank_order(per_neuron, k), per_neuron.numel())


def _expand(flags: torch.Tensor, shape: tuple[int, ...], axis: Optional[int]) -> torch.Tensor:
    """Sorted flat int64 indices (on the CPU) of every weight in the flagged units."""
    if axis is not None:
        rows, cols = shape
        flags = (flags.view(-1, 1) if axis == 0 else flags.view(1, -1)).expand(rows, cols).reshape(-1)
    return flags.nonzero().squeeze(1).to(torch.int64).cpu()


# ----------------------------------------------------------------------------------------------- selection
def _common_modules(sets: Mapping[Hashable, Mapping[str, torch.Tensor]]) -> tuple[list[str], dict[str, tuple]]:
    """The modules every score set covers (in the first set's order) and their shapes; DeanError if they differ."""
    keys = list(sets)
    first = _label(keys[0])
    modules = list(sets[keys[0]])
    if not modules:
        raise DeanError(f"scores {first!r} hold no module: score the data set on a model with target modules.")
    for key in keys[1:]:
        if set(sets[key]) != set(modules):
            diff = sorted(set(sets[key]) ^ set(modules))[:5]
            raise DeanError(f"scores {_label(key)!r} cover other modules than {first!r} (e.g. {diff}): "
                            "score every data set with the same model and target_modules.")
    shapes = {}
    for module in modules:
        shapes[module] = shape = _shape(sets[keys[0]], module)
        for key in keys[1:]:
            if _shape(sets[key], module) != shape:
                raise DeanError(f"scores {_label(key)!r} for {module!r} have shape {_shape(sets[key], module)}, "
                                f"expected {shape}.")
    return modules, shapes


def _select(sets: Mapping[Hashable, Mapping[str, torch.Tensor]], fractions: Mapping[Hashable, float],
            program: list[tuple[str, Any, int]], modules: list[str], shapes: Mapping[str, tuple],
            layouts: Mapping[str, Optional[int]]) -> tuple[dict[str, torch.Tensor], dict[Hashable, list[int]]]:
    """Per module, the flat indices of the weights that `program` selects, each name standing for the top
    floor(fraction * units) units of its scores; and per name, the units it keeps in each module."""
    indices: dict[str, torch.Tensor] = {}
    kept: dict[Hashable, list[int]] = {key: [] for key in sets}
    for module in modules:
        shape, axis = shapes[module], layouts[module]
        units = _units(shape, axis)
        leaves: dict[Hashable, torch.Tensor] = {}

        def leaf(key: Hashable) -> torch.Tensor:
            if key not in leaves:
                k = math.floor(fractions[key] * units)
                kept[key].append(k)
                leaves[key] = _top_units(sets[key], module, k, _label(key), axis, math.prod(shape))
            return leaves[key]

        indices[module] = _expand(run(program, leaf), shape, axis)
    return indices, kept


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


def _legacy(targets: Mapping[str, Mapping[str, torch.Tensor]], general: Optional[Mapping[str, torch.Tensor]],
            module: str, shape: tuple[int, ...], q: float, p: Optional[float]) -> tuple[torch.Tensor, int]:
    """One module's legacy selection (the reference code's count, int(q * rows * cols), and rule), and its k."""
    k_target, k_general = _reference_k(q, shape), _reference_k(p, shape) if p is not None else 0
    if general is not None and k_general != k_target:
        raise DeanError(f"legacy=True reproduces the reference code, which fails when p and q keep different "
                        f"numbers of weights ({module!r}: {k_target} for q={q:g}, {k_general} for p={p:g}): "
                        "pass p equal to q, or leave legacy off.")
    sets = [_top(scores, module, k_target, n) for n, scores in targets.items()]
    protected = _top(general, module, k_general, "general") if general is not None else sets[0][:0]
    return _legacy_module(sets, protected).to(torch.int64).cpu(), k_target


def _warn_if_nothing(label: str, q: float, units: list[int], what: str) -> None:
    """Warn that `label`=q keeps no unit of any matrix (the smallest has min(units) `what`)."""
    smallest = min(units)
    logger.warning("%s=%g selects nothing in any module (floor(%s * %s) = 0 for every matrix; the smallest has %d "
                   "%s): use %s >= %.3g to select at least one per matrix.", label, q, label, what, smallest, what,
                   label, 1 / smallest)


def _warn_if_large(label: str, q: float, indices: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple]) -> None:
    """Warn when the fraction `label`=q, or the selection, covers more than LARGE_FRACTION of some matrix."""
    fractions = {m: indices[m].numel() / max(1, math.prod(shapes[m])) for m in indices}
    largest = max(fractions, key=fractions.get)
    if q <= LARGE_FRACTION and fractions[largest] <= LARGE_FRACTION:
        return
    total = sum(idx.numel() for idx in indices.values())
    touched = sum(1 for idx in indices.values() if idx.numel())
    logger.warning("%s=%g lets the mask cover up to %.3g%% of each weight matrix: it masks %d weights in %d of %d "
                   "modules, at most %.3g%% of one matrix (%s). DEAN masks are meant to be tiny (the paper uses "
                   "q = 5e-7, a few weights per matrix); pass a smaller %s unless you mean to ablate this much.",
                   label, q, 100 * q, total, touched, len(indices), 100 * fractions[largest], largest, label)


def select_coupled_neurons(
    targets: Mapping[str, Mapping[str, torch.Tensor]],
    general: Mapping[str, torch.Tensor] | None = None,
    *,
    q: float,
    p: float | None = None,
    legacy: bool = False,
    granularity: str = "weight",
    scale: float = 0.0,
    transposed: Optional[Iterable[str]] = None,
) -> NeuronMask:
    """Per weight matrix, the weights in the top-q of every target's scores but not the top-p of `general`.

    `targets` maps a data-set name (e.g. "fairness", "privacy") to its ImportanceScores; `general`
    is the utility scores (None: nothing is protected). The top sets hold `floor(q * numel)` and
    `floor(p * numel)` entries. `legacy=True` reproduces the reference code, defect included (see
    the module docstring). `scale` is stored on the mask: the factor its weights are multiplied by when it is
    applied (0, the default, zeroes them).

    `granularity="neuron"` ranks whole neurons instead of single weights. A neuron's score is the sum of its
    weights' scores; each matrix keeps the top `floor(q * neurons)` of every target (`floor(p * neurons)` of
    `general`), the sets intersect and subtract as for weights, and the mask holds every weight of the selected
    neurons. A neuron is an output row of up_proj / gate_proj / c_fc / fc1 / w1 / w3 and of every layer that is
    not a down projection, and an input column of a down projection (down_proj, fc2, w2, an MLP's c_proj): the
    rows of the up/gate projections and the columns of the down projection that belong to one hidden unit (see
    `neuron_axis`). `transposed` names the modules whose weight is stored (in, out), as transformers' Conv1D
    (GPT-2) stores it; None takes every module named c_attn, c_fc or c_proj (GPT-2's Conv1D layers); pass () for
    a model whose c_* layers are nn.Linear. Neuron granularity needs dense scores (score with keep=1).
    """
    q = _check_fraction("q", q)
    p = _check_fraction("p", p) if general is not None else None
    granularity = _check_granularity(granularity)
    scale = validate_scale(scale)
    if legacy and granularity != "weight":
        raise DeanError("legacy=True reproduces the reference code, which selects single weights: pass "
                        "granularity='weight', or leave legacy off.")
    if not isinstance(targets, Mapping) or not targets:
        raise DeanError("targets is empty: pass a dict such as {'fairness': scores_f, 'privacy': scores_p}.")
    names = list(targets)
    sets: dict[Hashable, Mapping[str, torch.Tensor]] = dict(targets)
    if general is not None:
        sets[_GENERAL] = general
    modules, shapes = _common_modules(sets)
    layouts = _layouts(modules, shapes, granularity, transposed)
    if legacy:
        picked = {m: _legacy(targets, general, m, shapes[m], q, p) for m in modules}
        indices, counts = {m: idx for m, (idx, _) in picked.items()}, [k for _, k in picked.values()]
    else:  # (T_1 ∩ ... ∩ T_n) \ G, as the postfix program "T_1 T_2 & ... T_n & G -"
        program = [("name", names[0], 0)] + [item for n in names[1:] for item in (("name", n, 0), ("&", None, 0))]
        program += [("name", _GENERAL, 0), ("-", None, 0)] if general is not None else []
        fractions = {key: p if key == _GENERAL else q for key in sets}
        indices, kept = _select(sets, fractions, program, modules, shapes, layouts)
        counts = kept[names[0]]
    if not any(counts):
        _warn_if_nothing("q", q, [_units(shapes[m], layouts[m]) for m in modules],
                         "weights" if granularity == "weight" else "neurons")
    _warn_if_large("q", q, indices, shapes)
    metadata = {"targets": names, "general": general is not None, "q": q, "p": p, "legacy": legacy,
                "granularity": granularity}
    return NeuronMask(indices, shapes, metadata, scale=scale)


def select_by_expression(
    expression: str,
    scores: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    fractions: Mapping[str, float],
    granularity: str = "weight",
    scale: float = 0.0,
    transposed: Optional[Iterable[str]] = None,
) -> NeuronMask:
    """Per weight matrix, the weights that a set expression over named score sets selects.

    `expression` is written over the names of `scores` (letters, digits, '_' and '.'): `a & b` (intersection),
    `a | b` (union), `a - b` (difference) and parentheses; '&' binds tighter than '|' and '-', which are
    left-associative at the same level (`a - b | c` is `(a - b) | c`). Each name stands for the top
    `floor(fractions[name] * units)` of its scores in each matrix, units being weights or, with
    `granularity="neuron"`, neurons (see `select_coupled_neurons` for neurons, `transposed` and `scale`). The
    contrastive variant `(unsafe_fairness & unsafe_privacy) - (safe_fairness | safe_privacy | general)` keeps the
    weights important for the unsafe answers of both dimensions and for neither the safe answers nor general
    utility; `select_coupled_neurons(targets, general, q=q, p=p)` is `t_1 & t_2 - general` with fractions q, q, p.
    Score sets the expression does not name are not read. Nothing is evaluated as Python.
    """
    program = parse(expression)
    if not isinstance(scores, Mapping):
        raise DeanError(f"scores is a {type(scores).__name__}: expected a dict of name -> ImportanceScores.")
    for kind, name, position in program:
        if kind == "name" and name not in scores:
            raise syntax_error(expression, position, f"unknown score set {name!r} (the score sets are "
                                                f"{quote(list(scores), 200)})")
    names = expression_names(expression)
    if not isinstance(fractions, Mapping):
        raise DeanError(f"fractions is a {type(fractions).__name__}: expected a dict of name -> fraction in (0, 1], "
                        f"e.g. {dict.fromkeys(names, 1e-3)}.")
    missing = [n for n in names if n not in fractions]
    if missing:
        raise DeanError(f"fractions has no entry for {missing} of the selection expression {quote(expression)}: give "
                        "each name the fraction of each matrix it stands for, e.g. "
                        f"{dict.fromkeys(names, 1e-3)}.")
    used = {n: _check_fraction(f"fractions[{n!r}]", fractions[n]) for n in names}
    granularity = _check_granularity(granularity)
    scale = validate_scale(scale)
    sets = {n: scores[n] for n in names}
    modules, shapes = _common_modules(sets)
    layouts = _layouts(modules, shapes, granularity, transposed)
    indices, kept = _select(sets, used, program, modules, shapes, layouts)
    if not any(indices[m].numel() for m in modules):
        empty = [n for n in names if not any(kept[n])]
        if empty:
            _warn_if_nothing(f"fractions[{empty[0]!r}]", used[empty[0]],
                             [_units(shapes[m], layouts[m]) for m in modules],
                             "weights" if granularity == "weight" else "neurons")
    largest = max(used, key=used.get)
    _warn_if_large(f"fractions[{largest!r}]", used[largest], indices, shapes)
    metadata = {"expression": expression, "fractions": used, "granularity": granularity}
    return NeuronMask(indices, shapes, metadata, scale=scale)
