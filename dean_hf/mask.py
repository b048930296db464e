"""`NeuronMask`: which weights to zero, as sorted flat indices per module."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterator

import torch

from .errors import DeanError
from .io import atomic_write_safetensors, read_safetensors

FORMAT = "dean_hf.neuron_mask"
FORMAT_VERSION = 1
_LAYER = re.compile(r"\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The block number in a module name (`model.layers.3.mlp.up_proj` -> 3), or None."""
    found = _LAYER.search(f".{name}.")
    return int(found.group(1)) if found else None


def module_kind(name: str) -> str:
    """The module's name without the block prefix (`model.layers.3.mlp.up_proj` -> `mlp.up_proj`)."""
    found = list(_LAYER.finditer(f".{name}"))
    return name[found[-1].end() - 1:] if found else name


def validate_indices(name: str, indices: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Check that `indices` are a sorted, duplicate-free 1-D int64 tensor within `shape`; return them."""
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.dim() != 1:
        what = f"{indices.dtype} tensor of shape {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) \
            else type(indices).__name__
        raise DeanError(f"mask indices of {name!r} are a {what}, expected a 1-D int64 tensor.")
    numel = math.prod(shape)
    if indices.numel():
        if int(indices.min()) < 0 or int(indices.max()) >= numel:
            raise DeanError(f"mask indices of {name!r} range over [{int(indices.min())}, {int(indices.max())}], "
                            f"outside the weight's {numel} entries (shape {tuple(shape)}).")
        steps = indices[1:] - indices[:-1]
        if bool((steps <= 0).any()):
            kind = "duplicated" if bool((steps == 0).any()) else "unsorted"
            raise DeanError(f"mask indices of {name!r} are {kind}: expected strictly increasing flat indices.")
    return indices


class NeuronMask(Mapping):
    """A read-only mapping module name -> sorted int64 flat indices into that module's weight."""

    def __init__(self, indices: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
                 metadata: Mapping[str, Any] | None = None):
        missing = set(indices) - set(shapes)
        if missing:
            raise DeanError(f"mask has indices but no weight shape for {sorted(missing)}.")
        self._shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
        self._indices = {n: validate_indices(n, indices.get(n, torch.zeros(0, dtype=torch.int64)), self._shapes[n])
                         for n in self._shapes}
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._indices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"NeuronMask({self.num_masked} weights in {len(self)} modules)"

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each module's weight shape."""
        return dict(self._shapes)

    @property
    def num_masked(self) -> int:
        """Total number of masked weights."""
        return sum(int(t.numel()) for t in self._indices.values())

    @property
    def num_weights(self) -> int:
        """Total number of weights in the masked modules."""
        return sum(math.prod(s) for s in self._shapes.values())

    def counts_per_module(self) -> dict[str, int]:
        """Masked weights per module name."""
        return {n: int(t.numel()) for n, t in self._indices.items()}

    def counts_per_layer(self) -> dict[int | None, int]:
        """Masked weights per block index (None for modules outside the numbered blocks)."""
        counts: Counter = Counter()
        for n, t in self._indices.items():
            counts[layer_index(n)] += int(t.numel())
        return dict(counts)

    def counts_per_kind(self) -> dict[str, int]:
        """Masked weights per module kind (`mlp.up_proj`, `self_attn.q_proj`, ...)."""
        counts: Counter = Counter()
        for n, t in self._indices.items():
            counts[module_kind(n)] += int(t.numel())
        return dict(counts)

    def to_bool(self, name: str) -> torch.Tensor:
        """The mask of one module as a boolean tensor of the weight's shape."""
        flat = torch.zeros(math.prod(self._shapes[name]), dtype=torch.bool)
        flat[self._indices[name]] = True
        return flat.view(self._shapes[name])

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (indices; shapes and metadata in its JSON header), atomically."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "shapes": {n: list(s) for n, s in self._shapes.items()}, "metadata": dict(self.metadata)}
        atomic_write_safetensors(path, {n: t.cpu() for n, t in self._indices.items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronMask":
        """Read a file written by `save`; every index is checked."""
        tensors, meta = read_safetensors(path, "mask")
        if meta.get("format") != FORMAT:
            raise DeanError(f"{str(path)!r} holds {meta.get('format')!r}, not a dean_hf mask.")
        try:
            version = int(meta.get("format_version", 0))
        except (TypeError, ValueError):
            version = -1
        if version > FORMAT_VERSION:
            raise DeanError(f"{str(path)!r} was written by a newer dean_hf (mask format {version}); upgrade dean_hf.")
        shapes = meta.get("shapes")
        if not isinstance(shapes, dict) or set(shapes) != set(tensors):
            raise DeanError(f"{str(path)!r}: the header's shapes do not list exactly the file's modules; "
                            "the file is corrupt.")
        parsed = {}
        for n, s in shapes.items():
            if not isinstance(s, list) or not s or not all(isinstance(d, int) and d > 0 for d in s):
                raise DeanError(f"{str(path)!r}: shape of {n!r} is {s!r}, expected a list of positive ints.")
            parsed[n] = tuple(s)
        extra = meta.get("metadata")
        return cls({n: tensors[n] for n in parsed}, parsed, extra if isinstance(extra, dict) else {})
