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


def test_score_select_apply_eval(workspace):
    w = workspace
    data = ["--data", f"fairness={w / 'fair.csv'}", "--data", f"privacy={w / 'priv.csv'}",
            "--data", f"general={w / 'gen.csv'}"]
    out = dean("score", "--model", w / "model", *data, "--n", 4, "--out", w / "scores", "--quiet", "--max-length", 64)
    assert "fairness: 14 modules, 4 samples" in out.stdout
    files = sorted(p.name for p in (w / "scores").iterdir())
    assert files == ["fairness.safetensors", "general.safetensors", "privacy.safetensors"]
    before = (w / "scores" / "fairness.safetensors").stat().st_mtime_ns
    dean("score", "--model", w / "model", *data, "--n", 4, "--out", w / "scores", "--quiet", "--max-length", 64)
    assert (w / "scores" / "fairness.safetensors").stat().st_mtime_ns == before  # cached, not recomputed

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


def test_push_stops_at_hfapi(workspace, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from dean_hf.cli import main

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(HfApi, "upload_folder",
                        lambda self, repo_id, folder_path, **kw: calls.append(("upload", repo_id)) or "url")
    if not (workspace / "mask").is_dir():
        pytest.skip("needs the artifact of test_score_select_apply_eval")
    assert main(["push", "--mask", str(workspace / "mask"), "--repo", "me/mask"]) == 0
    assert calls == [("create", "me/mask"), ("upload", "me/mask")]
    assert main(["push", "--repo", "me/x"]) == 2
    assert "exactly one of --mask" in capsys.readouterr().err
