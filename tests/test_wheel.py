"""The wheel is the product: build it, install it into a fresh virtual environment (no editable install, the
repository not on the path, run from a temporary folder) and use it as the README says.

The fresh environment gets dean_hf from the wheel alone (`pip install --no-deps`); its third-party dependencies are
this interpreter's site-packages, reached through a `.pth` line (a `.pth` in that folder, such as an editable
install's, is not processed from there), so that nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import make_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

QUICKSTART = textwrap.dedent("""
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from dean_hf import DeanConfig, DeanEditor

    assert not any(Path(p).resolve() == Path(sys.argv[2]) for p in sys.path if p), "the repository is on sys.path"
    import dean_hf
    print("dean_hf from", dean_hf.__file__)

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])

    config = DeanConfig(q=0.05, p=0.05, target_modules="mlp", num_samples=4, max_length=64)
    editor = DeanEditor(model, config)
    mask = editor.fit(tokenizer, targets={"fairness": "embedded:fairness", "privacy": "embedded:privacy"},
                      general="embedded:general", show_progress=False)
    editor.print_mask_summary()
    with editor.disable_adapter():
        pass
    editor.save_pretrained("my-dean-mask")
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    again = DeanEditor.from_pretrained(base, "my-dean-mask")
    assert again.masks["default"].num_masked == mask.num_masked > 0
    merged = again.merge_and_unload()
    print("quickstart ok", mask.num_masked, sorted(p.name for p in Path("my-dean-mask").iterdir()))
""")


def _run(cmd, cwd, env, timeout=600):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:3]}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_the_built_wheel_works_in_a_fresh_environment(tmp_path, tokenizer):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    try:
        import hatchling  # noqa: F401 - built here without downloading the build backend
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(tmp_path / "dist"), str(ROOT)],
         tmp_path, env)
    wheel = next((tmp_path / "dist").glob("dean_hf-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "dean_hf/peft_export.py" in names and any(n.startswith("dean_hf/model_cards/") for n in names)
    assert not any(n.startswith(("tests/", ".ci/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    bin_dir = venv / "bin"
    python = bin_dir / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).strip())
    (purelib / "zz_third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         tmp_path, env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    work = tmp_path / "work"
    work.mkdir()
    assert "score" in _run([str(bin_dir / "dean"), "--help"], work, env)
    assert "--max-new-tokens" in _run([str(bin_dir / "dean"), "demo", "--help"], work, env)
    model_dir = tmp_path / "tiny"
    make_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = _run([str(python), "-c", QUICKSTART, str(model_dir), str(ROOT)], work, env)
    assert f"dean_hf from {purelib / 'dean_hf' / '__init__.py'}" in out
    assert "quickstart ok" in out and "dean_mask.safetensors" in out


def test_the_sdist_carries_the_license_and_no_ci_files(tmp_path):
    pytest.importorskip("hatchling")
    from hatchling.builders.sdist import SdistBuilder

    import tarfile

    sdist = Path(next(SdistBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])))

    names = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
    assert "LICENSE" in names and "dean_hf/peft_export.py" in names and "pyproject.toml" in names
    assert not any(n.startswith(".ci") for n in names)
    assert "Apache License" in (ROOT / "LICENSE").read_text().splitlines()[0]
