"""Every write path writes only dean_hf's own files, atomically, with the user's permissions, and never replaces a
model, a checkpoint or any other file that dean_hf did not write."""

import hashlib
import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanEditor, DeanError, score_importance, select_coupled_neurons
from dean_hf.cli import main

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 8]])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones too) -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(tmp_path: Path, tokenizer=None) -> Path:
    """A folder as users have them: a saved checkpoint, its own README, notes, a subfolder."""
    folder = tmp_path / "work"
    model = make_model("llama", seed=7)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My checkpoint\nhand-written notes\n")
    (folder / "notes.txt").write_text("do not delete\n")
    (folder / "runs").mkdir()
    (folder / "runs" / "log.json").write_text('{"step": 1}\n')
    return folder


def fitted(model, q=0.05):
    f, p, g = (score_importance(model, random_examples(4, seed=s), show_progress=False) for s in (1, 2, 3))
    return {"fairness": f, "privacy": p}, g, select_coupled_neurons({"fairness": f, "privacy": p}, g, q=q, p=q)


def editor_with_mask(model):
    _, _, mask = fitted(model)
    editor = DeanEditor(model)
    editor.add_adapter("default", mask)
    editor.set_adapter("default")
    return editor


def test_save_pretrained_beside_a_checkpoint_keeps_every_byte(tmp_path):
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    editor = editor_with_mask(make_model("llama"))
    editor.add_adapter("strict", fitted(editor.model, q=0.2)[2])
    editor.save_pretrained(folder)
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before  # the user's README.md included
    assert sorted(set(after) - set(before)) == ["dean_config.json", "dean_mask.safetensors", "strict/README.md",
                                                "strict/dean_config.json", "strict/dean_mask.safetensors"]
    loaded = DeanEditor.from_pretrained(make_model("llama"), folder)  # the artifact beside the checkpoint loads
    assert torch.equal(loaded.masks["default"]["model.layers.0.mlp.up_proj"],
                       editor.masks["default"]["model.layers.0.mlp.up_proj"])
    editor.save_pretrained(folder)  # saving again replaces only our own files
    assert {k: v for k, v in snapshot(folder).items() if k in before} == before


@pytest.mark.parametrize("crash_in", ["mask", "config", "card"])
def test_crash_mid_save_changes_nothing(tmp_path, monkeypatch, crash_in):
    folder = user_folder(tmp_path)
    editor = editor_with_mask(make_model("llama"))
    editor.save_pretrained(folder / "art")
    before = snapshot(folder)
    import dean_hf.io as io

    real = io.atomic_write

    def crashing(path, write):
        def half_then_crash(tmp):
            write(tmp)  # the temporary file is complete ...
            raise OSError("disk full")  # ... and the rename never happens

        name = Path(path).name
        target = {"mask": "dean_mask.safetensors", "config": "dean_config.json", "card": "README.md"}[crash_in]
        return real(path, half_then_crash if name == target else write)

    monkeypatch.setattr(io, "atomic_write", crashing)
    other = editor_with_mask(make_model("llama", seed=3))
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(folder / "art")
    after = snapshot(folder)
    changed = {k for k in before if before[k] != after.get(k)}
    assert set(after) == set(before)  # no temporary file left behind, nothing removed
    # The files written before the crash are complete new files; the one that crashed is the old one.
    assert {"mask": set(), "config": {"art/dean_mask.safetensors"},
            "card": {"art/dean_mask.safetensors", "art/dean_config.json"}}[crash_in] == changed


def test_half_written_artifact_is_refused_by_its_digest(tmp_path, monkeypatch):
    editor_with_mask(make_model("llama")).save_pretrained(tmp_path / "art")
    import dean_hf.io as io

    real = io.atomic_write

    def killed_before_config(path, write):
        if Path(path).name == "dean_config.json":
            raise OSError("killed")
        return real(path, write)

    monkeypatch.setattr(io, "atomic_write", killed_before_config)
    other = DeanEditor(make_model("llama"))
    other.add_adapter("default", fitted(other.model, q=0.2)[2])
    with pytest.raises(OSError):
        other.save_pretrained(tmp_path / "art")  # the new mask is written, the config is not: a mismatched pair
    monkeypatch.undo()
    model = make_model("llama")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DeanError, match="mask_digest"):
        DeanEditor.from_pretrained(model, tmp_path / "art")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_files_get_the_users_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        editor = editor_with_mask(make_model("llama"))
        editor.add_adapter("strict", fitted(editor.model, q=0.2)[2])
        editor.save_pretrained(tmp_path / "new" / "art")
        from dean_hf.hub import save_merged

        save_merged(editor.merge_and_unload(), tmp_path / "new" / "merged")
    finally:
        os.umask(old)
    merged = tmp_path / "new" / "merged"
    assert stat.S_IMODE(merged.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in merged.iterdir()} == {0o644}
    art = tmp_path / "new" / "art"
    for path in [art, art / "strict"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in [p for p in art.rglob("*") if p.is_file()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_cli_select_and_score_beside_other_files(tmp_path, tokenizer):
    folder = user_folder(tmp_path, tokenizer)
    model = make_model("llama", seed=7)
    targets, general, _ = fitted(model)
    scores = tmp_path / "scores"
    for name, s in {**targets, "general": general}.items():
        s.save(scores / f"{name}.safetensors")
    before = snapshot(folder)
    # a folder holding a model: refused unless asked for
    assert main(["select", "--scores", str(scores), "--q", "0.05", "--p", "0.05", "--out", str(folder)]) == 2
    assert main(["select", "--scores", str(scores), "--q", "0.05", "--p", "0.05", "--out", str(folder),
                 "--overwrite"]) == 0
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"dean_config.json", "dean_mask.safetensors"}  # the user's README is kept

    # `dean score --out` never replaces a file that is not a dean_hf score file, and says so before scoring.
    (folder / "general.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    before = snapshot(folder)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join('{"prompt": "Hi there", "response": "Hello to you"}\n' for _ in range(4)))
    code = main(["score", "--model", str(folder), "--data", f"general={data}", "--n", "2", "--out", str(folder),
                 "--quiet"])
    assert code == 2 and snapshot(folder) == before


def test_cli_apply_refuses_to_replace_a_model(tmp_path, tokenizer, capsys):
    folder = user_folder(tmp_path, tokenizer)
    editor = editor_with_mask(make_model("llama", seed=7))
    editor.save_pretrained(tmp_path / "mask")
    before = snapshot(folder)
    assert main(["apply", "--model", str(folder), "--mask", str(tmp_path / "mask"), "--out", str(folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["apply", "--model", str(folder), "--mask", str(tmp_path / "mask"), "--out",
                 str(folder / "runs")]) == 2  # inside the base model's folder
    other = tmp_path / "other"
    make_model("gpt2").save_pretrained(other)
    other_before = snapshot(other)
    assert main(["apply", "--model", str(folder), "--mask", str(tmp_path / "mask"), "--out", str(other)]) == 2
    assert snapshot(folder) == before and snapshot(other) == other_before

    # A fresh folder works; --overwrite replaces the base model's files but keeps the user's own.
    assert main(["apply", "--model", str(folder), "--mask", str(tmp_path / "mask"), "--out",
                 str(tmp_path / "edited")]) == 0
    assert main(["apply", "--model", str(folder), "--mask", str(tmp_path / "mask"), "--out", str(folder),
                 "--overwrite"]) == 0
    after = snapshot(folder)
    for kept in ("README.md", "notes.txt", "runs/log.json"):
        assert after[kept] == before[kept]
    assert after["model.safetensors"] != before["model.safetensors"]
    assert not any(".dean_hf-staging" in k for k in after)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(folder)(input_ids=IDS).logits,
                           AutoModelForCausalLM.from_pretrained(tmp_path / "edited")(input_ids=IDS).logits)


def test_cli_apply_crash_leaves_out_folder_as_it_was(tmp_path, tokenizer, monkeypatch):
    folder = user_folder(tmp_path, tokenizer)
    editor = editor_with_mask(make_model("llama", seed=7))
    editor.save_pretrained(tmp_path / "mask")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    before = snapshot(out)
    import transformers

    real = transformers.PreTrainedTokenizerBase.save_pretrained

    def crash(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", crash)
    assert main(["apply", "--model", str(folder), "--mask", str(tmp_path / "mask"), "--out", str(out)]) == 2
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_unwritable_out_is_found_before_any_work(tmp_path, capsys):
    if os.geteuid() == 0:
        blocked = tmp_path / "file"
        blocked.write_text("x")
        out = blocked / "sub"  # under a file: not creatable, even for root
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o500)
        out = blocked / "sub"
    code = main(["score", "--model", "nowhere/none", "--data", "general=embedded:general", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "Traceback" not in err


@pytest.mark.slow
def test_apply_default_model_round_trip(tmp_path, smollm2_dir):
    """The embedded default saves and reloads as a plain model: same logits as the merged model in memory."""
    from transformers import AutoModelForCausalLM

    from dean_hf.models import load_model

    model = load_model("default")
    mask_editor = DeanEditor(model)
    q = 1e-4
    gen = [{"input_ids": list(range(5, 25)), "labels": [-100] * 10 + list(range(15, 25))}]
    scores = score_importance(model, gen, target_modules="mlp", show_progress=False)
    mask = select_coupled_neurons({"a": scores}, None, q=q)
    mask_editor.add_adapter("default", mask)
    mask_editor.save_pretrained(tmp_path / "mask")
    mask_editor.unload()
    assert main(["apply", "--model", "default", "--mask", str(tmp_path / "mask"), "--out", str(tmp_path / "D")]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "D")
    assert "quantization_config" not in reloaded.config.to_dict()
    in_memory = DeanEditor.from_pretrained(load_model("default"), tmp_path / "mask").merge_and_unload()
    ids = torch.tensor([[1, 504, 3458, 314, 253, 2867, 30]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, in_memory(input_ids=ids).logits)


def test_reports_never_replace_a_users_file(tmp_path):
    """A report.md or report.json in the output folder that dean_hf did not write is refused, not replaced; dean_hf's
    own reports are replaced on the next run."""
    from dean_hf.eval.report import write_report

    (tmp_path / "report.md").write_text("# my notes\n")
    with pytest.raises(DeanError, match="not a dean_hf report"):
        write_report(tmp_path, "report", {"x": 1}, title="t")
    assert (tmp_path / "report.md").read_text() == "# my notes\n" and not (tmp_path / "report.json").exists()
    write_report(tmp_path / "ours", "report", {"x": 1}, title="t")
    write_report(tmp_path / "ours", "report", {"x": 2}, title="t")  # ours: replaced
    assert '"x": 2' in (tmp_path / "ours" / "report.json").read_text()
