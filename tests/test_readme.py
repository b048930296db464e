"""The README's result figures are the results files' figures (rendered by benchmarks/render_readme.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "benchmarks" / "render_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_come_from_the_results_files():
    renderer = load_renderer()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert renderer.render(text) == text, ("README.md disagrees with the results files: run "
                                           "`cd benchmarks && ../.venv/bin/python render_readme.py`")


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    import json

    renderer = load_renderer()
    agreement = json.loads(renderer.AGREEMENT.read_text())
    agreement["rules"]["all_label_sets"]["blind"]["fairness"]["n"] += 1
    changed = tmp_path / "agreement.json"
    changed.write_text(json.dumps(agreement))
    monkeypatch.setattr(renderer, "AGREEMENT", changed)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert renderer.render(text) != text
