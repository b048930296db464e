"""`transformers`-style logging for dean_hf: one library logger, verbosity set in one place."""

from __future__ import annotations

import logging
import os
import sys
import threading

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
