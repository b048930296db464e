"""`NeuronMask`: which weights to edit, as sorted flat indices per module, and the factor they are multiplied by
(`scale`: 0 zeroes them, DEAN's edit)."""

from __future__ import annotations

import hashlib
import math
import operator
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterator

import torch

from .errors import DeanError, quote
from .io import atomic_write_safetensors, read_safetensors
from .logging import get_logger

logger = get_logger(__name__)
FORMAT = "dean_hf.neuron_mask"
FORMAT_VERSION = 1
MAX_NUMEL = 2**40  # entries of one weight matrix (2 TiB in bf16): a larger shape is corrupt
_MAX_DIMS = 8
_LAYER = re.compile(r"\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The block number in a module name (`model.layers.3.mlp.up_proj` -> 3), or None."""
    found = _LAYER.search(f".{name}.")
    return int(found.group(1)) if found else None


def module_kind(name: str) -> str:
    """The module's name without the block prefix (`model.layers.3.mlp.up_proj` -> `mlp.up_proj`)."""
    found = list(_LAYER.finditer(f".{name}"))
    return name[found[-1].end() - 1:] if found else name


def validate_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Check that `shape` is a non-empty sequence of positive ints (not bools) with at most MAX_NUMEL entries."""
    expected = f"a list of 1 to {_MAX_DIMS} positive integers with at most {MAX_NUMEL} entries in all"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (list, tuple, torch.Size)) \
            or not 1 <= len(shape) <= _MAX_DIMS:
        raise DeanError(f"the weight shape of {quote(name)} is {quote(shape)}, expected {expected}.")
    dims = []
    for d in shape:
        try:
            dim = operator.index(d) if not isinstance(d, bool) else 0
        except TypeError:
            dim = 0
        if not 1 <= dim <= MAX_NUMEL:
            raise DeanError(f"the weight shape of {quote(name)} is {quote(shape)}, expected {expected}.")
        dims.append(dim)
    if math.prod(dims) > MAX_NUMEL:
        raise DeanError(f"the weight shape of {quote(name)} is {quote(shape)}, expected {expected}.")
    return tuple(dims)


def validate_indices(name: str, indices: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Check that `indices` are a sorted, duplicate-free 1-D int64 tensor within `shape`; return them."""
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.dim() != 1:
        what = f"{indices.dtype} tensor of shape {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) \
            else type(indices).__name__
        raise DeanError(f"mask indices of {quote(name)} are a {what}, expected a 1-D int64 tensor.")
    numel = math.prod(shape)
    if indices.numel():
        if int(indices.min()) < 0 or int(indices.max()) >= numel:
            raise DeanError(f"mask indices of {quote(name)} range over [{int(indices.min())}, {int(indices.max())}], "
                            f"outside the weight's {numel} entries (shape {tuple(shape)}).")
        steps = indices[1:] - indices[:-1]
        if bool((steps <= 0).any()):
            kind = "duplicated" if bool((steps == 0).any()) else "unsorted"
            raise DeanError(f"mask indices of {quote(name)} are {kind}: expected strictly increasing flat indices.")
    return indices


def validate_scale(value: Any) -> float:
    """`value` as a float in [0, 1) (-0.0 becomes 0.0), or DeanError naming it."""
    # Compared before anything else: NaN and inf fail the range, and a huge int never reaches float().
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1
    if not ok:
        raise DeanError(f"scale={quote(value)}: expected a finite number in [0, 1), the factor the selected weights "
                        "are multiplied by (0 zeroes them, as DEAN does; 0.5 halves them).")
    return float(value) + 0.0


class NeuronMask(Mapping):
    """A read-only mapping module name -> sorted int64 flat indices into that module's weight.

    `scale` is the factor the indexed weights are multiplied by when the mask is applied: 0.0 (the default)
    zeroes them, as DEAN does; a value in (0, 1) dampens them instead. It is part of the mask (saved in its file
    and covered by `digest()`)."""

    def __init__(self, indices: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]],
                 metadata: Mapping[str, Any] | None = None, *, scale: float = 0.0):
        missing = [n for n in indices if n not in shapes]
        if missing:
            raise DeanError(f"mask has indices but no weight shape for {quote(missing)}.")
        bad_names = [n for n in shapes if not isinstance(n, str) or not n]
        if bad_names:
            raise DeanError(f"mask module names must be non-empty strings, got {quote(bad_names[0])}.")
        self._shapes = {n: validate_shape(n, s) for n, s in shapes.items()}
        self._indices = {n: validate_indices(n, indices.get(n, torch.zeros(0, dtype=torch.int64)), self._shapes[n])
                         for n in self._shapes}
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))
        self._scale = validate_scale(scale)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._indices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        scaled = f", scale={self._scale:g}" if self._scale else ""
        return f"NeuronMask({self.num_masked} weights in {len(self)} modules{scaled})"

    @property
    def scale(self) -> float:
        """The factor the masked weights are multiplied by: 0.0 zeroes them."""
        return self._scale

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

    def digest(self) -> str:
        """SHA-256 (hex) of the module names, shapes, indices and scale: equal digests mean equal masks."""
        # Every field is length-prefixed, so no two different masks hash the same bytes. A non-zero scale is a
        # trailer after the last module (the count of modules comes first, so the records end at a known point):
        # masks of scale 0 keep the digests they had before scale existed.
        h = hashlib.sha256(f"{FORMAT}/{FORMAT_VERSION}\0".encode())
        h.update(struct.pack("<Q", len(self._indices)))
        for name in sorted(self._indices):
            encoded, shape, indices = name.encode("utf-8", "surrogatepass"), self._shapes[name], self._indices[name]
            h.update(struct.pack(f"<Q{len(encoded)}sQ{len(shape)}QQ", len(encoded), encoded, len(shape), *shape,
                                 indices.numel()))
            h.update(indices.cpu().numpy().astype("<i8").tobytes())
        if self._scale:
            h.update(b"scale\0" + struct.pack("<d", self._scale))
        return h.hexdigest()

    def to_bool(self, name: str) -> torch.Tensor:
        """The mask of one module as a boolean tensor of the weight's shape."""
        flat = torch.zeros(math.prod(self._shapes[name]), dtype=torch.bool)
        flat[self._indices[name]] = True
        return flat.view(self._shapes[name])

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (indices; shapes, scale and metadata in its JSON header), atomically."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "scale": self._scale,
                "shapes": {n: list(s) for n, s in self._shapes.items()}, "metadata": dict(self.metadata)}
        atomic_write_safetensors(path, {n: t.cpu() for n, t in self._indices.items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronMask":
        """Read a file written by `save`; the header and every index are checked (DeanError if not valid). Files
        written before masks had a scale load with scale 0.0."""
        tensors, meta = read_safetensors(path, "mask")
        where = quote(str(path))
        if meta.get("format") != FORMAT:
            raise DeanError(f"{where} holds {quote(meta.get('format'))}, not a dean_hf mask ({FORMAT!r}).")
        version = meta.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise DeanError(f"{where} was written by a newer dean_hf (mask format {quote(version, 40)}, this one "
                            f"reads {FORMAT_VERSION}): upgrade dean_hf (pip install -U dean_hf).")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DeanError(f"{where} has format_version={quote(version)}, expected an integer from 1 to "
                            f"{FORMAT_VERSION}: the file is corrupt; write it again.")
        shapes = meta.get("shapes")
        if not isinstance(shapes, dict) or set(shapes) != set(tensors):
            raise DeanError(f"{where}: the header's shapes do not list exactly the file's modules; the file is "
                            "corrupt: write it again.")
        extra = meta.get("metadata", {})
        if not isinstance(extra, dict):
            raise DeanError(f"{where} has metadata={quote(extra)}, expected a JSON object: the file is corrupt; "
                            "write it again.")
        try:
            return cls({n: tensors[n] for n in shapes}, shapes, extra, scale=meta.get("scale", 0.0))
        except DeanError as err:  # name the file: the message says what in it is wrong
            raise DeanError(f"{where}: {err} The file is corrupt: write it again.") from None


def check_digest(mask: NeuronMask, expected: Any, where: str) -> None:
    """Raise DeanError if `expected` (the config's `mask_digest`) does not match `mask`; warn if it is absent."""
    if expected is None:
        logger.warning("%s has no mask_digest (written by dean_hf < 0.2?): the mask file cannot be checked for "
                       "alterations; save it again with this version to add one.", where)
        return
    if not isinstance(expected, str) or expected != mask.digest():
        raise DeanError(f"{where}: the mask file (digest {mask.digest()[:12]}...) does not match the mask_digest "
                        f"{quote(expected, 80)} in dean_config.json: one of them was altered or comes from another "
                        "save. Save the mask again, or download it again.")
