"""`ImportanceScores`: per-weight importance of one data set, with where it came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterator

import torch

from ..errors import DeanError
from ..io import atomic_write_safetensors, read_safetensors

FORMAT = "dean_hf.importance_scores"
FORMAT_VERSION = 1


class ImportanceScores(Mapping):
    """A read-only mapping module name -> fp32 score tensor of that module's weight shape.

    `metadata` records the model (name, revision), the scorer, the number of samples and response
    tokens, the target modules and a fingerprint of the tokenized data.
    """

    def __init__(self, scores: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None):
        self._path: str | None = None
        checked: dict[str, torch.Tensor | None] = {}
        for name, tensor in scores.items():
            if not isinstance(tensor, torch.Tensor):
                raise DeanError(f"score for {name!r} is a {type(tensor).__name__}, expected a torch.Tensor.")
            checked[name] = tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)
        self._scores = checked
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._scores[name]
        if tensor is None:  # lazily loaded: read this one tensor from the file
            from safetensors import safe_open

            with safe_open(str(self._path), framework="pt") as f:
                tensor = f.get_tensor(name)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def __repr__(self) -> str:
        meta = ", ".join(f"{k}={self.metadata.get(k)!r}" for k in ("scorer", "num_samples", "model_name"))
        return f"ImportanceScores({len(self)} modules, {meta})"

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each module's weight shape."""
        return {name: tuple(self[name].shape) for name in self._scores}

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (tensors + JSON metadata in its header), atomically."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.metadata, "modules": list(self._scores)}
        atomic_write_safetensors(path, {k: self[k].detach().cpu() for k in self._scores}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, lazy: bool = False) -> "ImportanceScores":
        """Read a file written by `save`. `lazy=True` reads each module's tensor only when it is accessed
        (selection then holds one module's scores at a time); the file must stay in place, unchanged."""
        tensors, meta = read_safetensors(path, "importance scores", lazy=lazy)
        if meta.get("format") != FORMAT:
            raise DeanError(f"{str(path)!r} holds {meta.get('format')!r}, not importance scores: "
                            "pass a file written by ImportanceScores.save.")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise DeanError(f"{str(path)!r} was written by a newer dean_hf (format {meta['format_version']}); "
                            "upgrade dean_hf to read it.")
        order = meta.get("modules")
        if isinstance(order, list) and sorted(order) == sorted(tensors):  # safetensors sorts names; keep model order
            tensors = {name: tensors[name] for name in order}
        meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "modules")}
        for name, dtype in ((n, t if lazy else t.dtype) for n, t in tensors.items()):
            if dtype not in (torch.float32, "F32"):
                raise DeanError(f"{str(path)!r}: scores for {name!r} are {dtype}, expected float32.")
        if not lazy:
            return cls(tensors, meta)
        scores = cls({}, meta)
        scores._scores, scores._path = {name: None for name in tensors}, str(path)
        return scores
