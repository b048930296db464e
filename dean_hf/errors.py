"""The one exception type dean_hf raises for user errors, and how messages quote user values."""

from __future__ import annotations

from typing import Any

_QUOTE_LIMIT = 120


class DeanError(ValueError):
    """A user error: a bad option, file, model or data set.

    The message names the bad value, what was expected and how to fix it. Nothing was changed
    (no weight, no file) when it is raised.
    """


class UnsupportedError(DeanError, AttributeError):
    """A PEFT name dean_hf does not support. A DeanError, and an AttributeError so that `hasattr` is False."""


def quote(value: Any, limit: int = _QUOTE_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters: error messages never echo a whole bad file."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
