"""`transformers`-style logging for dean_hf: one library logger and one progress-bar switch, set in one place."""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_lock = threading.Lock()
_handler: logging.Handler | None = None
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _root() -> logging.Logger:
    return logging.getLogger(__name__.split(".")[0])


def _configure() -> None:
    global _handler
    with _lock:
        if _handler is not None:
            return
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("[dean_hf] %(levelname)s: %(message)s"))
        root = _root()
        root.addHandler(_handler)
        root.setLevel(_LEVELS.get(os.environ.get("DEAN_HF_VERBOSITY", "warning").lower(), logging.WARNING))
        root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """The logger for a dean_hf module (configured on first use, level from `DEAN_HF_VERBOSITY`)."""
    _configure()
    return logging.getLogger(name)


def set_verbosity(level: int | str) -> None:
    """Set the library's log level: a `logging` level or one of debug, info, warning, error."""
    _configure()
    if isinstance(level, str):
        level = _LEVELS[level.lower()]
    _root().setLevel(level)


# Progress bars -----------------------------------------------------------------------------------------------------
# One switch for dean_hf's own bars (tqdm with `disable=not show_progress(flag)`) and those of the libraries it
# drives. Each library keeps its own flag; we set them through their public functions, imported only when switched.
_progress_bars_enabled = True


def _library_switches() -> list[tuple[str, Callable[[], bool], Callable[[], None], Callable[[], None]]]:
    """(library, is_enabled, enable, disable) for datasets, transformers and huggingface_hub, where installed."""
    switches = []
    # transformers' switch also sets huggingface_hub's: hub comes last so that its own state is the one kept.
    try:
        import transformers.utils.logging as tf
    except ImportError:
        pass
    else:
        switches.append(("transformers", tf.is_progress_bar_enabled, tf.enable_progress_bar, tf.disable_progress_bar))
    try:
        import datasets.utils as ds
    except ImportError:
        pass
    else:
        switches.append(("datasets", lambda: not ds.are_progress_bars_disabled(), ds.enable_progress_bars,
                         ds.disable_progress_bars))
    try:
        import huggingface_hub.utils as hub
    except ImportError:
        pass
    else:
        switches.append(("huggingface_hub", lambda: not hub.are_progress_bars_disabled(), hub.enable_progress_bars,
                         hub.disable_progress_bars))
    return switches


def _set_library_bars(states: dict[str, bool]) -> None:
    """Switch each named library whose state differs (in the order above)."""
    for name, is_enabled, enable, disable in _library_switches():
        if name in states and is_enabled() != states[name]:
            enable() if states[name] else disable()


def disable_progress_bars() -> None:
    """Turn every progress bar off: dean_hf's and those of `datasets`, `transformers` and `huggingface_hub`."""
    global _progress_bars_enabled
    _progress_bars_enabled = False
    _set_library_bars({name: False for name, *_ in _library_switches()})


def enable_progress_bars() -> None:
    """Turn progress bars back on (dean_hf's and the libraries'); a library's own environment variable still wins."""
    global _progress_bars_enabled
    _progress_bars_enabled = True
    _set_library_bars({name: True for name, *_ in _library_switches()})


def progress_bars_enabled() -> bool:
    """False after `disable_progress_bars()` (the CLI's --quiet)."""
    return _progress_bars_enabled


def show_progress(requested: bool) -> bool:
    """Whether a bar the caller asked for is drawn: `tqdm(..., disable=not show_progress(flag))`."""
    return bool(requested) and _progress_bars_enabled


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Within the block, every library's progress bars are on or off; their previous states come back on exit.

    dean_hf's own bars follow `show_progress(...)` of the caller and are not changed here.
    """
    switches = _library_switches()
    before = {name: is_enabled() for name, is_enabled, _, _ in switches}
    _set_library_bars({name: bool(enabled) for name in before})
    try:
        yield
    finally:
        _set_library_bars(before)
