"""Argument helpers shared by the `dean` subcommands: argument types checked before anything loads, the model
and judge options, and the output-folder checks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..errors import DeanError

DATA_HELP = ("NAME=SOURCE, repeatable. SOURCE is a CSV or JSONL file, a saved `datasets` folder or a Hub data set id "
             "with prompt/response columns; 'embedded:fairness' (privacy, general) names the data shipped with "
             "dean_hf.")


class DeanArgumentParser(argparse.ArgumentParser):
    """argparse with no abbreviated options (`--q` is never read as `--quiet`) and one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's usage + error (2-11 lines) becomes one line, exit status 2
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected a fraction in (0, 1], e.g. 5e-7") \
            from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]: it is the fraction of each weight matrix kept")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


def count_or_all(text: str):
    """--eval-n: 'all' or a positive number of questions."""
    return "all" if text == "all" else positive(text)


def auto_or_positive(text: str):
    """--batch-size of generation: 'auto' or a positive number."""
    return "auto" if text == "auto" else positive(text)


def named_sources(items: Sequence[str]) -> dict[str, str]:
    from ..data import resolve_source

    out = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise DeanError(f"--data {item!r}: expected NAME=SOURCE, e.g. --data fairness=fair.csv")
        if name in out:
            raise DeanError(f"--data names {name!r} twice.")
        out[name] = str(resolve_source(source))
    return out


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct, embedded), a local folder or "
                                                       "a Hub model id")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device-map", default=None, type=device_map, help="accelerate device map: 'auto', "
                   "'balanced', 'sequential' or one device ('cuda:0', 'cpu'; default: CPU)")
    p.add_argument("--revision", default=None, help="model revision (branch, tag or commit) of a Hub model")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off: safer)")


def device_map(text: str):
    from ..models import check_device_map

    try:
        return check_device_map(text)
    except DeanError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", default="rules", help="'rules' (offline) or a judge model id or folder: "
                                                    "OpenSafetyLab/MD-Judge-v0.1 (the papers' judge), Llama Guard")
    p.add_argument("--judge-device-map", default=None, type=device_map,
                   help="where the judge model goes, like --device-map (default: where --device-map puts the model)")
    p.add_argument("--judge-dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="the judge's weights dtype (default: --dtype)")


def load_judge(args):
    """The judge of --judge, placed by --judge-device-map/--judge-dtype (default: as the evaluated model)."""
    from ..eval import get_judge

    return get_judge(args.judge, device_map=args.judge_device_map or args.device_map,
                     dtype=args.judge_dtype or args.dtype)


def load_model_and_tokenizer(args):
    from ..models import load_model, load_tokenizer

    return (load_model(args.model, dtype=args.dtype, device_map=args.device_map, revision=args.revision,
                       trust_remote_code=args.trust_remote_code),
            load_tokenizer(args.model, trust_remote_code=args.trust_remote_code, revision=args.revision))


def layers_per_pass(text: str):
    if text == "auto":
        return "auto"
    try:
        return positive(text)
    except argparse.ArgumentTypeError:
        raise DeanError(f"--layers-per-pass {text!r}: expected 'auto' or a positive integer.") from None


def target_modules(text: str):
    return text.split(",") if "," in text else text


def floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise DeanError(f"{what} {text!r}: expected comma-separated numbers, e.g. 1e-4,1e-3") from None


def check_out(out: str) -> None:
    if not str(out).strip():
        raise DeanError("--out '' names no folder (it would write into the current one): give a folder name.")


def same_or_inside(out: str, folder) -> bool:
    dst, src = Path(out).resolve(), Path(folder).resolve()
    return dst == src or src in dst.parents
