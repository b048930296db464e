"""File helpers. Every write is one file at a time, atomic (a temporary file in the same folder, then
`os.replace`), with the user's normal permissions, and touches no other file of the folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import DeanError, quote

META_KEY = "dean_hf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # files dean_hf never loads (unpickling runs code)
MAX_JSON_BYTES = 64 * 1024 * 1024  # a config or report this large is not one dean_hf wrote
_MAX_JSON_DEPTH = 64


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def _default_file_mode(folder: Path) -> int:
    """The mode a new file gets in `folder` from the user's umask (0666 less the umask)."""
    probe = _temporary_name(folder / "mode")
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it onto `path` in one step.

    A crash (or an exception from `write`) leaves `path` as it was and removes the temporary file.
    The file gets the user's normal permissions (0666 less the umask), whatever mode `write` created it with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the mode the user's umask gives
        mode = stat.S_IMODE(tmp.stat().st_mode)
        write(tmp)
        os.chmod(tmp, mode)  # some writers (safetensors) create their file 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    data = text.encode("utf-8")  # a lone surrogate fails here, before any file exists
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented, key-sorted JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `tensors` with `meta` (JSON) in the header to `path`, atomically."""
    from safetensors.torch import save_file

    header = {META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                             metadata=header))


@contextmanager
def staged_files(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder inside `target`; on success move each file written there into `target`,
    one `os.replace` at a time, and remove the staging folder.

    For writers that write a whole folder themselves (`save_pretrained` of transformers or of a tokenizer):
    files of `target` that the writer did not produce are never touched, and an exception inside the block
    leaves `target` exactly as it was (the staging folder is removed)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = target / f".dean_hf-staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        mode = _default_file_mode(target)
        for src in files:
            dst = target / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, mode)  # writers such as safetensors create their files 0600
            os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(directory: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise DeanError unless `directory` is (or can be created as) a writable folder. Creates nothing."""
    directory = Path(directory)
    try:
        if directory.exists():
            if not directory.is_dir():
                raise DeanError(f"{what} {quote(str(directory))} is a file, expected a folder: pick another path.")
            probe = directory
        else:
            probe = directory.parent
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if not probe.is_dir():
                raise DeanError(f"{what} {quote(str(directory))} cannot be created: {quote(str(probe))} is a file.")
    except OSError as err:
        raise DeanError(f"{what} {quote(str(directory))} is not a usable path ({err.strerror}).") from None
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DeanError(f"{what} {quote(str(directory))} is not writable ({quote(str(probe))} denies writing): "
                        "pick a folder you can write to.")
    return directory


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for an existing regular file (a symlink to one counts); False for folders, devices, FIFOs, and
    paths the OS rejects (too long, ...)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def read_safetensors(path: str | os.PathLike, what: str, *, lazy: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by `atomic_write_safetensors`: (tensors, meta). `what` names it in errors.

    `lazy=True` returns each tensor's dtype name ("F32", ...) instead of the tensor, reading no data."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not is_regular_file(path):
        raise DeanError(f"{what} file {quote(str(path))} does not exist (or is not a regular file): check the path.")
    try:
        tensors: dict[str, Any] = {}
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_slice(key).get_dtype() if lazy else f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as err:
        raise DeanError(f"{what} file {quote(str(path))} is not a readable safetensors file ({quote(str(err))}); "
                        "it may be truncated or corrupt: write it again.") from None
    if META_KEY not in header:
        raise DeanError(f"{what} file {quote(str(path))} has no {META_KEY!r} header: it was not written by dean_hf.")
    meta = parse_json(header[META_KEY], f"the header of {what} file {quote(str(path))}")
    if not isinstance(meta, dict):
        raise DeanError(f"{what} file {quote(str(path))} has a header that is not a JSON object.")
    return tensors, meta


# One match per JSON string (escapes included, so brackets inside strings are skipped whole) or per bracket: the
# depth scan runs in the regex engine and its Python loop sees only strings and brackets.
_STRUCTURE = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]', re.DOTALL)


def _nests_deeper(text: str, limit: int) -> bool:
    """True when `text` opens more than `limit` arrays/objects at once (brackets inside strings do not count).

    It stops reading at the first bracket past the limit, so a huge file of "[" is refused at once."""
    depth = 0
    for match in _STRUCTURE.finditer(text):
        ch = text[match.start()]
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_json(text: str, what: str) -> Any:
    """`json.loads` that raises only DeanError: corrupt text, nesting deeper than 64, integers over Python's
    digit limit, and non-finite numbers (`1e400`, NaN) are refused, named by `what`."""
    if _nests_deeper(text, _MAX_JSON_DEPTH):  # the guard: json's own RecursionError comes only near 1,000
        raise DeanError(f"{what} nests deeper than {_MAX_JSON_DEPTH} levels: it is corrupt or not dean_hf's.")

    def refuse_constant(name: str) -> Any:
        raise DeanError(f"{what} holds {name}, which is not a JSON number: the file is corrupt.")

    def parse_float(token: str) -> float:
        value = float(token)
        if value in (float("inf"), float("-inf")):
            raise DeanError(f"{what} holds the number {quote(token, 40)}, outside the range of a float: "
                            "the file is corrupt.")
        return value

    try:
        return json.loads(text, parse_constant=refuse_constant, parse_float=parse_float)
    except DeanError:
        raise
    except (ValueError, RecursionError, TypeError) as err:  # JSONDecodeError is a ValueError, as is the digit limit
        raise DeanError(f"{what} is not valid JSON ({quote(str(err))}); it may be truncated or corrupt.") from None


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Read a JSON object from `path`, with a DeanError for a missing, special, huge, empty or corrupt file."""
    path = Path(path)
    if not is_regular_file(path):
        raise DeanError(f"{what} {quote(str(path))} does not exist (or is not a regular file).")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DeanError(f"{what} {quote(str(path))} is {size} bytes, over the {MAX_JSON_BYTES} a dean_hf file "
                            "can hold: it is not dean_hf's, or corrupt.")
        raw = path.read_bytes()
    except OSError as err:
        raise DeanError(f"{what} {quote(str(path))} cannot be read ({err.strerror}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DeanError(f"{what} {quote(str(path))} is not UTF-8 text (byte {err.start}); it may be corrupt.") from None
    data = parse_json(text, f"{what} {quote(str(path))}")
    if not isinstance(data, dict):
        raise DeanError(f"{what} {quote(str(path))} holds a JSON {type(data).__name__}, expected an object.")
    return data
