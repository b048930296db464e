"""`dean` as a subprocess on a tiny model: files, exit codes and one-line errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_model, pairs

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def dean(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "dean_hf.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"dean {args} -> {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    import datasets

    root = tmp_path_factory.mktemp("cli")
    model = make_model("llama")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for name, offset in (("fair", 0), ("priv", 2), ("gen", 4)):
        datasets.Dataset.from_list(pairs(8, offset)).to_csv(str(root / f"{name}.csv"))
    (root / "questions.jsonl").write_text("".join(json.dumps({"question": r["prompt"]}) + "\n" for r in pairs(3)))
    return root


@pytest.mark.floors
def test_score_select_apply_eval(workspace):
    w = workspace
    data = ["--data", f"fairness={w / 'fair.csv'}", "--data", f"privacy={w / 'priv.csv'}",
            "--data", f"general={w / 'gen.csv'}"]
    out = dean("score", "--model", w / "model", *data, "--n", 4, "--out", w / "scores", "--quiet", "--max-length", 64)
    assert "fairness: 14 modules, 4 samples" in out.stdout
    files = sorted(p.name for p in (w / "scores").iterdir())
    assert files == ["fairness.safetensors", "general.safetensors", "privacy.safetensors"]
    before = (w / "scores" / "fairness.safetensors").stat().st_mtime_ns
    again = dean("score", "--model", w / "model", *data, "--n", 4, "--out", w / "scores", "--quiet",
                 "--max-length", 64)
    assert (w / "scores" / "fairness.safetensors").stat().st_mtime_ns == before  # cached, not recomputed
    assert again.stdout.count("reused (same model, data and options)") == 3  # and it says so
    assert "it/s" not in again.stderr and "%|" not in again.stderr  # --quiet: no bar of ours or datasets'/transformers'

    out = dean("select", "--scores", w / "scores", "--q", 0.05, "--p", 0.05, "--out", w / "mask")
    assert "per layer: 0:" in out.stdout and "per module type:" in out.stdout
    config = json.loads((w / "mask" / "dean_config.json").read_text())
    assert config["q"] == 0.05 and config["base_model_fingerprint"] is not None

    dean("apply", "--model", w / "model", "--mask", w / "mask", "--out", w / "edited")
    assert (w / "edited" / "model.safetensors").is_file() and (w / "edited" / "README.md").is_file()
    from transformers import AutoModelForCausalLM

    from dean_hf import DeanEditor

    edited = AutoModelForCausalLM.from_pretrained(w / "edited")
    expected = DeanEditor.from_pretrained(AutoModelForCausalLM.from_pretrained(w / "model"), w / "mask")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(edited(input_ids=ids).logits, expected(input_ids=ids).logits)

    dean("eval", "--model", w / "model", "--mask", w / "mask", "--questions", f"privacy={w / 'questions.jsonl'}",
         "--prompt-column", "question", "--max-new-tokens", 4, "--out", w / "report", "--quiet")
    report = json.loads((w / "report" / "report.json").read_text())
    assert report["results"]["before"]["awareness"]["privacy"]["n"] == 3
    card = (w / "mask" / "README.md").read_text()  # the measured figures went into the mask's card
    assert "Measured by `dean eval`" in card and "| privacy awareness |" in card and "Not evaluated yet" not in card
    assert (w / "report" / "awareness.png").stat().st_size > 0 and (w / "report" / "report.md").is_file()


@pytest.mark.parametrize("args,message", [
    (["select", "--scores", "nowhere", "--q", "2"], "outside (0, 1]"),
    (["select", "--scores", "nowhere", "--q", "abc"], "not a number"),
])
def test_bad_arguments_exit_2(args, message):
    proc = dean(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_user_errors_are_one_line(workspace):
    w = workspace
    proc = dean("score", "--model", w / "model", "--data", f"fairness={w / 'missing.csv'}", "--out", w / "s2",
                check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    proc = dean("score", "--model", w / "model", "--data", f"fairness={w / 'fair.csv'}", "--prompt-column", "question",
                "--out", w / "s2", check=False)
    assert proc.returncode == 2 and "['prompt', 'response']" in proc.stderr and "Traceback" not in proc.stderr
    proc = dean("select", "--scores", w / "nowhere", "--q", 0.1, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (w / "s2").exists()


def test_push_stops_at_hfapi(tmp_path, hub_calls, capsys):
    """Stands alone: makes its own artifact and merged folder (it used to need another test's output)."""
    from dean_hf import DeanEditor, score_importance, select_coupled_neurons
    from dean_hf.cli import main
    from conftest import random_examples

    model = make_model("llama")
    scores = [score_importance(model, random_examples(3, seed=s), show_progress=False) for s in (1, 2)]
    editor = DeanEditor(model)
    editor.add_adapter("default", select_coupled_neurons({"f": scores[0], "p": scores[1]}, None, q=0.1))
    editor.save_pretrained(tmp_path / "mask")
    editor.merge_and_unload().save_pretrained(tmp_path / "merged")

    assert main(["push", "--mask", str(tmp_path / "mask"), "--repo", "me/mask"]) == 0
    assert [(c["op"], c["repo_id"]) for c in hub_calls] == [("create", "me/mask"), ("upload", "me/mask")]
    assert hub_calls[1]["files"] == ["README.md", "dean_config.json", "dean_mask.safetensors"]
    hub_calls.clear()
    assert main(["push", "--merged", str(tmp_path / "merged"), "--repo", "me/merged"]) == 0
    assert "model.safetensors" in hub_calls[1]["files"]
    hub_calls.clear()
    assert main(["push", "--repo", "me/x"]) == 2  # neither --mask nor --merged
    assert main(["push", "--mask", str(tmp_path / "mask") + "/", "--repo", "me/mask"]) == 0  # a trailing slash
    assert main(["push", "--mask", str(tmp_path / "absent") + "/", "--repo", "me/mask"]) == 2
    err = capsys.readouterr().err
    assert "does not exist as a folder here" in err and "Traceback" not in err and "HFValidationError" not in err


def test_artifact_records_what_ran(workspace, tmp_path):
    """The mask's config records the settings in force (not defaults) and what ran, reproducible from its files."""
    import torch
    import transformers

    w = workspace
    data = ["--data", f"fairness={w / 'fair.csv'}", "--data", f"privacy={w / 'priv.csv'}",
            "--data", f"general={w / 'gen.csv'}"]
    dean("score", "--model", w / "model", *data, "--n", 4, "--out", tmp_path / "scores", "--quiet",
         "--max-length", 48, "--batch-size", 2, "--keep", 0.5, "--no-chat-template")
    dean("select", "--scores", tmp_path / "scores", "--q", 0.05, "--p", 0.05, "--out", tmp_path / "mask")
    config = json.loads((tmp_path / "mask" / "dean_config.json").read_text())
    assert (config["batch_size"], config["max_length"], config["keep"], config["chat_template"]) == (2, 48, 0.5, False)
    assert (config["num_samples"], config["seed"]) == (4, 0)
    env = config["provenance"]["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    from dean_hf import ImportanceScores

    fair = ImportanceScores.load(tmp_path / "scores" / "fairness.safetensors", lazy=True).metadata
    recorded = config["provenance"]["data"]["fairness"]
    assert recorded["data_fingerprint"] == fair["data_fingerprint"] and recorded["num_samples"] == 4
    assert recorded["num_truncated"] == fair["num_truncated"]
