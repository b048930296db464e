"""The `dean` command line (the console script's entry point); the subcommands live in `dean_hf.commands`."""

from __future__ import annotations

import sys

from .commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
