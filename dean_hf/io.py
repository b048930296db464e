"""File helpers: atomic writes and safetensors files that carry a JSON header."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import DeanError

META_KEY = "dean_hf"


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    A crash inside the block leaves `target` as it was (absent, or its previous content).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `tensors` with `meta` (JSON) in the header to `path`, atomically (write, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_safetensors(path: str | os.PathLike, what: str, *, lazy: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by `atomic_write_safetensors`: (tensors, meta). `what` names it in errors.

    `lazy=True` returns each tensor's dtype name ("F32", ...) instead of the tensor, reading no data."""
    path = Path(path)
    if not path.is_file():
        raise DeanError(f"{what} file {str(path)!r} does not exist: check the path.")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_slice(key).get_dtype() if lazy else f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        raise DeanError(f"{what} file {str(path)!r} is not a readable safetensors file ({err}); "
                        "it may be truncated or corrupt: write it again.") from None
    if META_KEY not in header:
        raise DeanError(f"{what} file {str(path)!r} has no {META_KEY!r} header: it was not written by dean_hf.")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as err:
        raise DeanError(f"{what} file {str(path)!r} has a corrupt JSON header ({err}).") from None
    if not isinstance(meta, dict):
        raise DeanError(f"{what} file {str(path)!r} has a header that is not a JSON object.")
    return tensors, meta


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Read a JSON object from `path`, with a DeanError for a missing, empty or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise DeanError(f"{what} {str(path)!r} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DeanError(f"{what} {str(path)!r} is not valid JSON ({err}); it may be truncated or corrupt.") from None
    if not isinstance(data, dict):
        raise DeanError(f"{what} {str(path)!r} holds a JSON {type(data).__name__}, expected an object.")
    return data
