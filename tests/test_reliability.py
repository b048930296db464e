"""Bad input gets one clear DeanError and changes nothing."""

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_model, random_examples
from dean_hf import DeanConfig, DeanEditor, DeanError, NeuronMask, score_importance, select_coupled_neurons
from dean_hf.hub import load_artifact


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model = make_model("llama")
    s = score_importance(model, random_examples(3), show_progress=False)
    mask = select_coupled_neurons({"f": s, "p": s}, None, q=0.05)
    editor = DeanEditor(model)
    editor.add_mask("default", mask)
    editor.set_mask("default")
    path = tmp_path_factory.mktemp("art") / "mask"
    editor.save_pretrained(path)
    return path


def copy_of(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def expect_refused(path, match):
    model = make_model("llama")
    before = snapshot(model)
    with pytest.raises(DeanError, match=match):
        DeanEditor.from_pretrained(model, path)
    assert unchanged(model, before)


@pytest.mark.parametrize("content,match", [(b"", "not a readable"), (b"garbage" * 10, "not a readable")])
def test_corrupt_mask_file(artifact, tmp_path, content, match):
    path = copy_of(artifact, tmp_path)
    (path / "dean_mask.safetensors").write_bytes(content)
    expect_refused(path, match)


def test_truncated_mask_file(artifact, tmp_path):
    path = copy_of(artifact, tmp_path)
    data = (path / "dean_mask.safetensors").read_bytes()
    (path / "dean_mask.safetensors").write_bytes(data[: len(data) // 2])
    expect_refused(path, "truncated or corrupt")


@pytest.mark.parametrize("content,match", [("", "not valid JSON"), ("{\"q\": ", "not valid JSON"),
                                           ("[1, 2]", "expected an object"), ('{"q": 0}', "q=0")])
def test_corrupt_config(artifact, tmp_path, content, match):
    path = copy_of(artifact, tmp_path)
    (path / "dean_config.json").write_text(content)
    expect_refused(path, match)


def test_config_from_newer_version(artifact, tmp_path):
    path = copy_of(artifact, tmp_path)
    data = json.loads((path / "dean_config.json").read_text())
    data["dean_hf_version"] = "9.0.0"
    (path / "dean_config.json").write_text(json.dumps(data))
    expect_refused(path, "newer")


def test_missing_files_and_pickles(artifact, tmp_path):
    path = copy_of(artifact, tmp_path)
    (path / "dean_mask.safetensors").unlink()
    expect_refused(path, "missing")
    (path / "dean_mask.bin").write_bytes(b"\x80\x04pickle")
    expect_refused(path, "never unpickles")


def test_pickle_only_model_folder_refused(tmp_path):
    from dean_hf.models import load_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(DeanError, match="pickle"):
        load_model(str(tmp_path))


def test_apply_is_all_or_nothing():
    model = make_model("llama")
    before = snapshot(model)
    names = [n for n, m in model.named_modules() if n.endswith("_proj")]
    shapes = {n: tuple(dict(model.named_modules())[n].weight.shape) for n in names}
    shapes[names[-1]] = (1, 1)  # the last module is wrong: nothing may be applied
    mask = NeuronMask({n: torch.tensor([0]) for n in names}, shapes)
    editor = DeanEditor(model)
    with pytest.raises(DeanError, match="shape"):
        editor.add_mask("bad", mask)
    assert unchanged(model, before) and editor.masks == {}


def folder_state(folder):
    """Every entry under `folder`, hidden ones included: relative path -> bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def add_unrelated_files(folder):
    """Files a save must never touch (a checkpoint beside the artifact); returns their os.stat, by name."""
    import os

    (folder / "notes").mkdir(parents=True)
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(4096),
             ".gitattributes": b"*.safetensors filter=lfs\n", "notes/run.txt": b"lr=1e-4\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: os.stat(folder / name) for name in files}


def assert_untouched(folder, stats):
    import os

    for name, old in stats.items():
        new = os.stat(folder / name)
        assert (new.st_ino, new.st_mtime_ns, new.st_size) == (old.st_ino, old.st_mtime_ns, old.st_size), name


def crash_on_write(monkeypatch, k):
    """Make the k-th file write (a safetensors file or `Path.write_bytes`) write half of its bytes to the path it
    was given and raise KeyboardInterrupt, as a crash in the middle of a write would."""
    from pathlib import Path

    import safetensors.torch

    real_save_file, real_write_bytes, count = safetensors.torch.save_file, Path.write_bytes, [0]

    def hit():
        count[0] += 1
        return count[0] == k

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        if hit():
            data = Path(filename).read_bytes()
            real_write_bytes(Path(filename), data[: len(data) // 2])
            raise KeyboardInterrupt

    def write_bytes(self, data):
        if hit():
            real_write_bytes(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return real_write_bytes(self, data)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_atomic_save_leaves_no_half_artifact(artifact, tmp_path, monkeypatch, crash_at):
    """A crash in the middle of the k-th file of a save over an old artifact, in a folder that holds other files:
    the other files keep every byte (and are not even rewritten), no temporary file is left, and each artifact
    file is whole, old or new. A mix of old and new files is refused by the mask digest, never applied."""
    from dean_hf import hub

    config, mask = load_artifact(artifact)
    other = NeuronMask({n: idx[:-1] for n, idx in mask.items()}, mask.shapes)  # a different mask
    assert other.digest() != mask.digest()
    hub.save_artifact(tmp_path / "clean", config, other)
    new = folder_state(tmp_path / "clean")  # what a complete save of `other` writes
    folder = tmp_path / "checkpoint"
    stats = add_unrelated_files(folder)
    hub.save_artifact(folder, config, mask)
    before = folder_state(folder)
    with monkeypatch.context() as m:
        crash_on_write(m, crash_at)
        with pytest.raises(KeyboardInterrupt):
            hub.save_artifact(folder, config, other)
    after = folder_state(folder)
    assert sorted(after) == sorted(before)  # nothing left behind, nothing removed
    assert_untouched(folder, stats)
    for name, data in after.items():
        assert data == before[name] or data == new.get(name), f"{name} is neither the old nor the new file"
    if crash_at == 1:
        assert after == before
    try:
        loaded = load_artifact(folder)[1]
    except DeanError as err:
        assert "mask_digest" in str(err)
    else:
        assert loaded.digest() in (mask.digest(), other.digest())
    fresh = tmp_path / "fresh"  # an interrupted first save leaves no file
    with monkeypatch.context() as m:
        crash_on_write(m, crash_at)
        with pytest.raises(KeyboardInterrupt):
            hub.save_artifact(fresh, config, other)
    partial = folder_state(fresh) if fresh.exists() else {}
    assert set(partial) <= set(new) and all(partial[n] == new[n] for n in partial)
    hub.save_artifact(folder, config, other)  # an uninterrupted save completes the new artifact
    after = folder_state(folder)
    assert sorted(after) == sorted(before) and all(after[n] == new[n] for n in new)
    assert_untouched(folder, stats)
    assert load_artifact(folder)[1].digest() == other.digest()


def test_scores_file_written_atomically(tmp_path, monkeypatch):
    from dean_hf import ImportanceScores

    old = score_importance(make_model("llama"), random_examples(1), show_progress=False)
    new = score_importance(make_model("llama", seed=1), random_examples(1), show_progress=False)
    folder = tmp_path / "scores"
    stats = add_unrelated_files(folder)
    old.save(folder / "s.safetensors")
    before = folder_state(folder)
    for name in ("s.safetensors", "other.safetensors"):  # over an old file, and a new file
        with monkeypatch.context() as m:
            crash_on_write(m, 1)
            with pytest.raises(KeyboardInterrupt):
                new.save(folder / name)
        assert folder_state(folder) == before
        assert_untouched(folder, stats)
    new.save(folder / "s.safetensors")
    after = folder_state(folder)
    assert sorted(after) == sorted(before) and after["s.safetensors"] != before["s.safetensors"]
    assert all(after[n] == before[n] for n in before if n != "s.safetensors")
    assert_untouched(folder, stats)
    loaded = ImportanceScores.load(folder / "s.safetensors")
    assert all(torch.equal(loaded[k], new[k]) for k in new)


def test_check_base_model_override(artifact):
    other = make_model("llama", seed=5)
    with pytest.raises(DeanError, match="check_base_model=False"):
        DeanEditor.from_pretrained(other, artifact)
    assert DeanEditor.from_pretrained(other, artifact, check_base_model=False).active_mask == "default"


def test_tokenizer_without_pad_token_generates(tokenizer):
    import copy

    from dean_hf.eval import generate_answers

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    out = generate_answers(make_model("llama"), tok, ["Hello?", "Where is Paris?"], max_new_tokens=2,
                           show_progress=False)
    assert len(out) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mask_loader(artifact, tmp_path_factory, data):
    raw = (artifact / "dean_mask.safetensors").read_bytes()
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
    if kind == "flip":
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255))
        mutated = bytes(buf)
    elif kind == "truncate":
        mutated = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "splice":
        i = data.draw(st.integers(0, len(raw)))
        mutated = raw[:i] + data.draw(st.binary(max_size=64)) + raw[i:]
    else:
        mutated = data.draw(st.binary(max_size=512))
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(artifact / "dean_config.json", folder / "dean_config.json")
    (folder / "dean_mask.safetensors").write_bytes(mutated)
    model = make_model("llama")
    before = snapshot(model)
    try:
        editor = DeanEditor.from_pretrained(model, folder, check_base_model=False)
    except DeanError:
        assert unchanged(model, before)
        return
    # Loaded: then it is a valid mask, applied completely and reversibly.
    mask = editor.masks["default"]
    modules = dict(model.named_modules())
    assert all((modules[n].weight.view(-1)[idx] == 0).all() for n, idx in mask.items())
    editor.unload()
    assert unchanged(model, before)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(DeanConfig.__dataclass_fields__) + ["unknown"]), value=JSON)
def test_fuzz_config_loader(artifact, tmp_path_factory, key, value):
    folder = tmp_path_factory.mktemp("fuzzcfg")
    shutil.copy(artifact / "dean_mask.safetensors", folder / "dean_mask.safetensors")
    data = json.loads((artifact / "dean_config.json").read_text())
    data[key] = value
    (folder / "dean_config.json").write_text(json.dumps(data))
    model = make_model("llama")
    before = snapshot(model)
    try:
        editor = DeanEditor.from_pretrained(model, folder)
    except DeanError:
        assert unchanged(model, before)
        return
    assert editor.active_mask == "default"


def test_hub_repo_missing_a_file(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    def fake_download(repo_id, filename, **kwargs):
        raise EntryNotFoundError(f"{filename} not found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = make_model("llama")
    before = snapshot(model)
    with pytest.raises(DeanError, match="has no dean_config.json"):
        DeanEditor.from_pretrained(model, "user/incomplete")
    assert unchanged(model, before)


def test_remote_code_is_off_by_default(monkeypatch, tmp_path):
    import transformers

    from dean_hf.models import load_model

    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return make_model("llama")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    load_model(str(tmp_path))
    assert seen["trust_remote_code"] is False
    load_model(str(tmp_path), trust_remote_code=True)
    assert seen["trust_remote_code"] is True
