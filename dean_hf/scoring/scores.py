"""`ImportanceScores`: per-weight importance of one data set, dense or reduced to each matrix's top entries.

Selection only ever asks for the k most important weights of a matrix (`top`), so a score set can be reduced,
once scoring is done, to the top `keep` fraction of every matrix, in rank order: value descending, ties by the
lower flat index, exactly the order selection uses. Every selection with q, p <= keep then gives the mask the
dense scores give, from a set about 1/(2 keep) times smaller (a 7B model's dense scores are 26 GB per set).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterable, Iterator

import torch

from ..errors import DeanError, quote
from ..io import atomic_write_safetensors, read_safetensors

FORMAT = "dean_hf.importance_scores"
FORMAT_VERSION = 2  # 1: dense tensors only; 2: adds the sparse (top `keep`) form
DEFAULT_KEEP = 1e-2
MIN_KEPT = 4096  # a small matrix keeps at least this many entries (all of them, if it has fewer): a few KiB


# The candidates' threshold is read off a strided sample of 1 in _SAMPLE_STRIDE entries; a prime stride, so that
# the sample of a (rows x columns) matrix does not fall on a few columns (LLM input features differ by orders of
# magnitude).
_SAMPLE_STRIDE = 67


def _candidates(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending flat indices of every entry >= some threshold t no larger than the k-th largest value: a superset
    of the top k and of every entry tied with the k-th, about 1.25 k of them. t comes from a strided sample; when
    the sample misleads (fewer than k entries reach it), t is the exact k-th value."""
    sample = flat[::_SAMPLE_STRIDE]
    wanted = math.ceil(1.25 * k / _SAMPLE_STRIDE) + 16
    if wanted < sample.numel():
        threshold = torch.topk(sample, wanted, sorted=False).values.min()
        candidates = (flat >= threshold).nonzero().squeeze(1)
        if candidates.numel() >= k:
            return candidates
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return (flat >= threshold).nonzero().squeeze(1)


def rank_top(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices, values) of the k largest entries of `flat`, largest first, ties broken by the lower index:
    the order selection uses. Runs on `flat`'s device.

    One pass finds the candidates (`_candidates`: ascending indices, a few more than k), and one stable sort of
    their values, descending, puts them in rank order: equal values keep their ascending index order. Full
    passes over the matrix: a compare and a nonzero (plus a top-k of a 1/67 sample), not a top-k of it all."""
    n = flat.numel()
    k = max(0, min(int(k), n))
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=flat.device), flat[:0]
    candidates = _candidates(flat, k) if k < n else None
    values = flat if candidates is None else flat[candidates]
    if candidates is not None and candidates.numel() > 4 * k:  # many entries tie with the k-th (e.g. zeros)
        threshold = torch.topk(values, k, sorted=False).values.min()
        above, tied = values > threshold, values == threshold
        chosen = above | (tied & (tied.cumsum(0) <= k - int(above.sum())))  # the lowest-index ties
        candidates, values = candidates[chosen], values[chosen]
    ranked = torch.sort(values, descending=True, stable=True)
    order = ranked.indices[:k]
    return (order if candidates is None else candidates[order]), ranked.values[:k]


def rank_order(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k largest entries of `flat`, largest first, ties broken by the lower index: the
    order selection uses. Runs on `flat`'s device."""
    return rank_top(flat, k)[0]


def keep_count(keep: float, numel: int) -> int:
    """How many entries of a matrix of `numel` weights a score set reduced to `keep` holds: the top `keep`
    fraction, but at least MIN_KEPT (or all entries of a smaller matrix), so small models keep every q usable."""
    return numel if keep >= 1 else min(numel, max(math.floor(keep * numel), MIN_KEPT))


def check_keep(keep: Any) -> float:
    """`keep` as a float in (0, 1], or DeanError."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1 or math.isnan(keep):
        raise DeanError(f"keep={quote(keep)}: expected the fraction of each matrix kept, in (0, 1] (1 keeps the dense "
                        f"scores; the default {DEFAULT_KEEP} serves every q, p up to {DEFAULT_KEEP}).")
    return float(keep)


class ImportanceScores(Mapping):
    """A read-only mapping module name -> fp32 score tensor of that module's weight shape.

    A set reduced with `sparsify(keep)` (as `score_importance` returns it by default) holds only each matrix's
    top `keep` fraction (at least `MIN_KEPT` entries): `top(name, k)` answers exactly for k up to that, and
    `scores[name]` is then dense with zeros outside the kept entries. `metadata` records the model (name,
    revision), the scorer, the number of
    samples and response tokens, the target modules and a fingerprint of the tokenized data.
    """

    def __init__(self, scores: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None):
        self._path: str | None = None
        self._keep = 1.0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._sparse: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        checked: dict[str, torch.Tensor | None] = {}
        for name, tensor in scores.items():
            if not isinstance(tensor, torch.Tensor):
                raise DeanError(f"score for {quote(name)} is a {type(tensor).__name__}, expected a torch.Tensor.")
            checked[name] = tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)
            self._shapes[name] = tuple(tensor.shape)
        self._scores = checked
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))

    @classmethod
    def from_top(cls, entries: Mapping[str, tuple[torch.Tensor, torch.Tensor]], shapes: Mapping[str, Iterable[int]],
                 keep: float, metadata: Mapping[str, Any] | None = None) -> "ImportanceScores":
        """A sparse set from each module's (flat indices in rank order, their values) and weight shape."""
        scores = cls({}, metadata)
        scores._keep = check_keep(keep)
        scores._shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
        scores._sparse = {n: (entries[n][0].to(torch.int64), entries[n][1].to(torch.float32)) for n in scores._shapes}
        scores._scores = {n: None for n in scores._shapes}
        return scores

    # ------------------------------------------------------------------ reading
    @property
    def keep(self) -> float:
        """The fraction of each matrix this set holds: 1.0 for dense scores."""
        return self._keep

    @property
    def is_sparse(self) -> bool:
        """True when only each matrix's top `keep` entries are held."""
        return self._keep < 1

    def _entries(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self._sparse[name]
        if entry is None:  # lazily loaded: read this module's two tensors from the file
            from safetensors import safe_open

            with safe_open(str(self._path), framework="pt") as f:
                entry = (f.get_tensor(f"{name}.indices").to(torch.int64), f.get_tensor(f"{name}.values"))
            _check_entry(entry, self._shapes[name], quote(self._path), name)
        return entry

    def __getitem__(self, name: str) -> torch.Tensor:
        if self.is_sparse:
            indices, values = self._entries(name)
            dense = torch.zeros(math.prod(self._shapes[name]), dtype=torch.float32)
            dense[indices] = values
            return dense.view(self._shapes[name])
        tensor = self._scores[name]
        if tensor is None:  # lazily loaded: read this one tensor from the file
            from safetensors import safe_open

            with safe_open(str(self._path), framework="pt") as f:
                tensor = f.get_tensor(name)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __contains__(self, name: object) -> bool:
        return name in self._shapes

    def __repr__(self) -> str:
        meta = ", ".join(f"{k}={self.metadata.get(k)!r}" for k in ("scorer", "num_samples", "model_name"))
        form = f"top {self._keep:g} of each matrix" if self.is_sparse else "dense"
        return f"ImportanceScores({len(self)} modules, {form}, {meta})"

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each module's weight shape."""
        return dict(self._shapes)

    def top(self, name: str, k: int) -> torch.Tensor:
        """Flat indices of module `name`'s k highest scores, in rank order (ties: lower index first).

        A sparse set answers for k up to what it kept; more is a DeanError that says to rescore."""
        numel = math.prod(self._shapes[name])
        if self.is_sparse:
            indices, _ = self._entries(name)
            if k > indices.numel() and indices.numel() < numel:
                raise DeanError(f"the top {k} of {numel} weights of {quote(name)} were asked for (a fraction "
                                f"{k / numel:.3g}), but these scores keep only the top keep={self._keep:g} of each "
                                f"matrix ({indices.numel()} weights): rescore with keep >= {k / numel:.3g} (keep=1 "
                                "for dense scores).")
            return indices[:k]
        return rank_order(self[name].reshape(-1), k)

    # ------------------------------------------------------------------ deriving
    def sparsify(self, keep: float = DEFAULT_KEEP) -> "ImportanceScores":
        """This set reduced to each matrix's top `keep` fraction, on the CPU (selection gives the same masks for
        every q, p <= keep)."""
        keep = check_keep(keep)
        if keep >= 1:
            return self
        if self.is_sparse:
            if keep > self._keep:
                raise DeanError(f"keep={keep:g} is more than these scores hold ({self._keep:g}): rescore instead.")
            entries = {n: tuple(t[:keep_count(keep, math.prod(shape))] for t in self._entries(n))
                       for n, shape in self._shapes.items()}
        else:
            entries = {}
            for name, shape in self._shapes.items():
                flat = self[name].reshape(-1)
                order, values = rank_top(flat, keep_count(keep, flat.numel()))
                entries[name] = (order.cpu(), values.cpu())
        return ImportanceScores.from_top(entries, self._shapes, keep, self.metadata)

    @classmethod
    def merge(cls, parts: list["ImportanceScores"], metadata: Mapping[str, Any] | None = None, *,
              order: Iterable[str] | None = None) -> "ImportanceScores":
        """One set from sets over disjoint modules (the passes of one scoring run), all dense or all of one keep."""
        if not parts:
            return cls({}, metadata)
        keeps = {part.keep for part in parts}
        if len(keeps) != 1:
            raise DeanError(f"cannot merge score sets of different keep values {sorted(keeps)}.")
        names = list(order) if order is not None else [n for part in parts for n in part]
        owner = {n: part for part in parts for n in part}
        if parts[0].is_sparse:
            return cls.from_top({n: owner[n]._entries(n) for n in names}, {n: owner[n]._shapes[n] for n in names},
                                parts[0].keep, metadata)
        return cls({n: owner[n][n] for n in names}, metadata)

    def with_metadata(self, metadata: Mapping[str, Any]) -> "ImportanceScores":
        """The same scores (same form, nothing copied) with `metadata`."""
        other = ImportanceScores.__new__(ImportanceScores)
        other.__dict__.update(self.__dict__)
        other.metadata = MappingProxyType(dict(metadata))
        return other

    def subset(self, names: Iterable[str]) -> "ImportanceScores":
        """The scores of the modules `names` only (same form, same metadata)."""
        names = [n for n in names if n in self._shapes]
        if self.is_sparse:
            return ImportanceScores.from_top({n: self._entries(n) for n in names}, {n: self._shapes[n] for n in names},
                                             self._keep, self.metadata)
        return ImportanceScores({n: self[n] for n in names}, self.metadata)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (tensors + JSON metadata in its header), atomically. Sparse sets store
        per module `NAME.indices` (int32 when the matrix allows) and `NAME.values`."""
        meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.metadata,
                                "modules": list(self._shapes)}
        if not self.is_sparse:
            atomic_write_safetensors(path, {k: self[k].detach().cpu() for k in self._shapes}, meta)
            return
        tensors = {}
        for name, shape in self._shapes.items():
            indices, values = self._entries(name)
            small = math.prod(shape) < 2 ** 31
            tensors[f"{name}.indices"] = indices.to(torch.int32 if small else torch.int64).cpu()
            tensors[f"{name}.values"] = values.cpu()
        meta["sparse"] = {"keep": self._keep, "shapes": {n: list(s) for n, s in self._shapes.items()}}
        atomic_write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, lazy: bool = False) -> "ImportanceScores":
        """Read a file written by `save` (dense files of dean_hf 0.1 too). `lazy=True` reads each module's
        tensors only when they are used (selection then holds one module's scores at a time); the file must stay
        in place, unchanged."""
        tensors, meta = read_safetensors(path, "importance scores", lazy=lazy)
        where = quote(str(path))
        if meta.get("format") != FORMAT:
            raise DeanError(f"{where} holds {quote(meta.get('format'))}, not importance scores: pass a file written "
                            "by ImportanceScores.save.")
        version = meta.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DeanError(f"{where} has format_version={quote(version)}: the file is corrupt.")
        if version > FORMAT_VERSION:
            raise DeanError(f"{where} was written by a newer dean_hf (format {version}); upgrade dean_hf to read it.")
        sparse = meta.get("sparse")
        order = meta.get("modules")
        meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "modules", "sparse")}
        if sparse is not None:
            return cls._load_sparse(path, tensors, sparse, order, meta, lazy)
        if isinstance(order, list) and sorted(order) == sorted(tensors):  # safetensors sorts names; keep model order
            tensors = {name: tensors[name] for name in order}
        for name, dtype in ((n, t if lazy else t.dtype) for n, t in tensors.items()):
            if dtype not in (torch.float32, "F32"):
                raise DeanError(f"{where}: scores for {quote(name)} are {dtype}, expected float32.")
        if not lazy:
            return cls(tensors, meta)
        scores = cls({}, meta)
        with _open(path) as f:
            scores._shapes = {name: tuple(f.get_slice(name).get_shape()) for name in tensors}
        scores._scores, scores._path = {name: None for name in tensors}, str(path)
        return scores

    @classmethod
    def _load_sparse(cls, path, tensors, sparse, order, meta, lazy) -> "ImportanceScores":
        where = quote(str(path))
        shapes = sparse.get("shapes") if isinstance(sparse, dict) else None
        keep = sparse.get("keep") if isinstance(sparse, dict) else None
        if not isinstance(shapes, dict) or not all(isinstance(s, list) and s and all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s) for s in shapes.values()):
            raise DeanError(f"{where}: the sparse scores' shapes are malformed; the file is corrupt.")
        expected = {f"{n}.{part}" for n in shapes for part in ("indices", "values")}
        if set(tensors) != expected:
            raise DeanError(f"{where}: the tensors do not match the modules listed in the header; the file is corrupt.")
        names = order if isinstance(order, list) and sorted(order) == sorted(shapes) else list(shapes)
        if lazy:
            scores = cls.from_top({}, {}, check_keep(keep), meta)
            scores._shapes = {n: tuple(shapes[n]) for n in names}
            scores._sparse = {n: None for n in names}
            scores._scores, scores._path = {n: None for n in names}, str(path)
            return scores
        entries = {n: (tensors[f"{n}.indices"], tensors[f"{n}.values"]) for n in names}
        for n, entry in entries.items():
            _check_entry(entry, tuple(shapes[n]), where, n)
        return cls.from_top(entries, {n: shapes[n] for n in names}, check_keep(keep), meta)


def _check_entry(entry: tuple[torch.Tensor, torch.Tensor], shape: tuple[int, ...], where: str, name: str) -> None:
    """DeanError unless a sparse entry is 1-D indices within the matrix and as many fp32 values."""
    indices, values = entry
    numel = math.prod(shape)
    if indices.dim() != 1 or indices.shape != values.shape or values.dtype != torch.float32 or (
            indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel)):
        raise DeanError(f"{where}: the sparse scores of {quote(name)} are malformed; the file is corrupt.")


def _open(path: str | os.PathLike):
    from safetensors import safe_open

    return safe_open(str(path), framework="pt")


def scores_from_accumulators(scores: Mapping[str, torch.Tensor], metadata: Mapping[str, Any],
                             keep: float) -> ImportanceScores:
    """Finished dense score tensors (on any device) -> an ImportanceScores on the CPU, reduced to `keep`."""
    if keep >= 1:
        return ImportanceScores({n: t.cpu() for n, t in scores.items()}, metadata)
    entries, shapes = {}, {}
    for name, tensor in scores.items():
        flat = tensor.reshape(-1)
        order, values = rank_top(flat, keep_count(keep, flat.numel()))
        entries[name], shapes[name] = (order.cpu(), values.cpu()), tuple(tensor.shape)
    return ImportanceScores.from_top(entries, shapes, keep, metadata)


__all__ = ["DEFAULT_KEEP", "ImportanceScores", "check_keep", "keep_count", "rank_order", "rank_top",
           "scores_from_accumulators"]
