"""The CLI, consistently (issue 20 §5): no abbreviations, --quiet everywhere, one-line errors found before any
model is loaded, and outputs that never land on a folder that is not ours."""

import json
import os

import pytest

from conftest import make_model

from dean_hf.cli import build_parser, main

SUBCOMMANDS = ["score", "select", "apply", "push", "eval", "tune", "plan", "demo", "label"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any model or tokenizer is loaded: the errors below must be found before that."""
    import dean_hf.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)


def run(capsys, *argv):
    """main()'s exit status and stderr; argparse's own exits are caught as the console script would see them."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def test_options_are_never_abbreviated(capsys, no_model_loads):
    # `--q` is not an option of `dean score`; with abbreviations it was silently read as --quiet
    code, err = run(capsys, "score", "--data", "fairness=embedded:fairness", "--q", "0.5")
    assert code == 2
    assert "--q" in one_line(err)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_takes_quiet(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    assert "--quiet" in sub._option_string_actions


def test_quiet_silences_transformers_logging(capsys):
    import transformers

    before = transformers.logging.get_verbosity()
    try:
        run(capsys, "plan", "no-such-config.json", "--quiet")
        assert transformers.logging.get_verbosity() == transformers.logging.ERROR
    finally:
        transformers.logging.set_verbosity(before)


@pytest.mark.parametrize("argv", [
    ["eval", "--eval-n", "abc"], ["eval", "--eval-n", "0"], ["eval", "--eval-n", "-3"],
    ["eval", "--batch-size", "abc"], ["eval", "--batch-size", "0"], ["tune", "--data", "a=b", "--questions", "c=d",
                                                                      "--dev-size", "x"],
    ["score", "--data", "a=b", "--n", "zero"], ["select", "--scores", "s", "--q", "2"],
    ["score", "--data", "a=b", "--fused-kernel", "yes"],
])
def test_bad_values_are_one_line_before_any_loading(capsys, no_model_loads, argv):
    code, err = run(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith("dean ") and "error" in line


def test_apply_checks_the_mask_before_loading_the_model(capsys, no_model_loads, tmp_path):
    code, err = run(capsys, "apply", "--model", "default", "--mask", tmp_path / "nothing-here", "--out",
                    tmp_path / "out")
    assert code == 2
    assert "does not exist" in one_line(err)


def test_a_mistyped_relative_mask_path_says_the_folder_does_not_exist(capsys, no_model_loads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, "apply", "--model", "default", "--mask", "world/nonexist", "--out", "out")
    assert code == 2
    line = one_line(err)
    assert "world/nonexist" in line and "does not exist" in line


def _mask_folder(tmp_path):
    from dean_hf import DeanConfig
    from dean_hf.hub import save_artifact
    from dean_hf.mask import NeuronMask

    import torch

    model = make_model("llama")
    name = "model.layers.0.mlp.down_proj"
    weight = dict(model.named_modules())[name].weight
    mask = NeuronMask({name: torch.tensor([0, 5])}, {name: tuple(weight.shape)})
    save_artifact(tmp_path / "mask", DeanConfig(q=0.1, p=0.1), mask)
    return tmp_path / "mask"


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling symlink"])
def test_a_config_that_is_not_a_file_says_what_it_is(capsys, no_model_loads, tmp_path, kind):
    folder = tmp_path / "mask"
    folder.mkdir()
    config = folder / "dean_config.json"
    if kind == "folder":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to(tmp_path / "gone.json")
    code, err = run(capsys, "apply", "--model", "default", "--mask", folder, "--out", tmp_path / "out")
    assert code == 2
    line = one_line(err)
    assert kind.split()[-1] in line.lower(), line


@pytest.mark.parametrize("out", ["", "MASK"])
def test_apply_refuses_an_empty_out_or_the_mask_folder(capsys, no_model_loads, tmp_path, out):
    mask = _mask_folder(tmp_path)
    card = (mask / "README.md").read_bytes()
    code, err = run(capsys, "apply", "--model", "default", "--mask", mask, "--out", mask if out == "MASK" else out)
    assert code == 2
    one_line(err)
    assert (mask / "README.md").read_bytes() == card


def scored_model(tmp_path):
    """A tiny model and a folder of its dense scores on three small data sets (fairness, privacy, general)."""
    from dean_hf.scoring import score_importance
    from conftest import random_examples

    model = make_model("llama")
    scores = tmp_path / "scores"
    scores.mkdir()
    for name, seed in (("fairness", 1), ("privacy", 2), ("general", 3)):
        score_importance(model, random_examples(4, seed=seed), keep=1.0, show_progress=False).save(
            scores / f"{name}.safetensors")
    return model, scores


def test_select_refuses_a_model_folder_unless_overwrite(capsys, tmp_path):
    model, scores = scored_model(tmp_path)
    target = tmp_path / "model"
    model.save_pretrained(target)
    before = sorted(p.name for p in target.iterdir())
    code, err = run(capsys, "select", "--scores", scores, "--q", "0.2", "--p", "0.01", "--out", target)
    assert code == 2 and "--overwrite" in one_line(err)
    assert sorted(p.name for p in target.iterdir()) == before
    code, err = run(capsys, "select", "--scores", scores, "--q", "0.2", "--p", "0.01", "--out", target, "--overwrite")
    assert code == 0, err
    assert (target / "dean_config.json").is_file()


def test_an_empty_mask_is_an_error_unless_asked_for(capsys, tmp_path):
    _, scores = scored_model(tmp_path)
    # p = 1 keeps every weight as general-purpose, so (F ∩ P) \ G is empty
    code, err = run(capsys, "select", "--scores", scores, "--q", "1e-4", "--p", "1", "--out", tmp_path / "m")
    assert code == 2
    assert "masks 0 of" in one_line(err) and "--allow-empty" in err
    assert not (tmp_path / "m").exists()
    code, err = run(capsys, "select", "--scores", scores, "--q", "1e-4", "--p", "1", "--out", tmp_path / "m",
                    "--allow-empty")
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "dean_config.json").read_text())["q"] == 1e-4


def test_a_truncated_checkpoint_is_one_line(capsys, tmp_path):
    folder = tmp_path / "model"
    make_model("llama").save_pretrained(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    mask = _mask_folder(tmp_path)
    code, err = run(capsys, "apply", "--model", folder, "--mask", mask, "--out", tmp_path / "out")
    assert code == 2
    assert "model.safetensors" in one_line(err)


def test_a_cuda_device_map_without_cuda_is_one_line(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    mask = _mask_folder(tmp_path)
    code, err = run(capsys, "apply", "--model", "default", "--device-map", "cuda", "--mask", mask, "--out",
                    tmp_path / "out")
    assert code == 2
    assert "cuda" in one_line(err).lower()
