import json
import re

import pytest
import torch

from conftest import make_model, pairs, random_examples
from dean_hf import DeanConfig, DeanEditor, DeanError, score_importance, select_coupled_neurons


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 8]])


def fitted_mask(model, q=0.05):
    f = score_importance(model, random_examples(4, seed=1), show_progress=False)
    p = score_importance(model, random_examples(4, seed=2), show_progress=False)
    g = score_importance(model, random_examples(4, seed=3), show_progress=False)
    return select_coupled_neurons({"fairness": f, "privacy": p}, g, q=q, p=q)


def masked_editor(model):
    """An editor on `model` with a fitted mask named "default" applied."""
    editor = DeanEditor(model)
    editor.add_mask("default", fitted_mask(model))
    editor.set_mask("default")
    return editor


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_apply_unload_disable_are_exact():
    model = make_model("llama")
    before, base_logits = state(model), logits(model, IDS)
    mask = fitted_mask(model)
    assert mask.num_masked > 0
    editor = DeanEditor(model)
    editor.add_mask("default", mask)
    editor.set_mask("default")
    assert editor.active_mask == "default"
    modules = dict(model.named_modules())
    for name, idx in mask.items():
        assert (modules[name].weight.view(-1)[idx] == 0).all()
    edited = logits(editor, IDS)
    assert not torch.equal(edited, base_logits)
    with editor.disable_mask():
        assert torch.equal(logits(editor, IDS), base_logits)
    assert torch.equal(logits(editor, IDS), edited)
    restored = editor.unload()
    assert restored is model and torch.equal(logits(model, IDS), base_logits)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_save_then_from_pretrained_equals_merge(tmp_path):
    model = make_model("qwen2")
    mask = fitted_mask(model)
    editor = DeanEditor(model, DeanConfig(q=0.05, p=0.05))
    editor.add_mask("default", mask)
    editor.set_mask("default")
    editor.save_pretrained(tmp_path / "art")
    files = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert files == ["README.md", "dean_config.json", "dean_mask.safetensors"]
    card = (tmp_path / "art" / "README.md").read_text()
    assert "library_name: dean_hf" in card and str(mask.num_masked) in card
    merged = editor.merge_and_unload()
    merged_logits = logits(merged, IDS)

    fresh = make_model("qwen2")
    loaded = DeanEditor.from_pretrained(fresh, tmp_path / "art")
    assert torch.equal(logits(loaded, IDS), merged_logits)
    assert loaded.dean_config.q == 0.05
    assert loaded.unload() is fresh and torch.equal(logits(fresh, IDS), logits(make_model("qwen2"), IDS))


def test_gpt2_conv1d_round_trip(tmp_path):
    model = make_model("gpt2")
    mask = fitted_mask(model)
    editor = DeanEditor(model)
    editor.add_mask("m", mask)
    editor.set_mask("m")
    editor.save_pretrained(tmp_path / "a")
    merged = logits(editor.merge_and_unload(), IDS)
    with pytest.raises(DeanError, match="subfolder='m'"):  # PEFT's layout: masks other than "default" in subfolders
        DeanEditor.from_pretrained(make_model("gpt2"), tmp_path / "a")
    loaded = DeanEditor.from_pretrained(make_model("gpt2"), tmp_path / "a", subfolder="m")
    assert torch.equal(logits(loaded, IDS), merged)


def test_several_named_masks():
    model = make_model("llama")
    base = logits(model, IDS)
    editor = DeanEditor(model)
    editor.add_mask("a", fitted_mask(model, q=0.05))
    editor.add_mask("b", fitted_mask(model, q=0.2))
    editor.set_mask("a")
    la = logits(editor, IDS)
    editor.set_mask("b")
    lb = logits(editor, IDS)
    assert not torch.equal(la, lb)
    editor.set_mask("a")
    assert torch.equal(logits(editor, IDS), la)
    editor.delete_mask("a")
    assert editor.active_mask is None and torch.equal(logits(editor, IDS), base)
    with pytest.raises(DeanError, match="no mask named"):
        editor.set_mask("a")
    with pytest.raises(DeanError, match="exists already"):
        editor.add_mask("b", editor.masks["b"])


def test_mask_for_another_model_is_refused_and_changes_nothing(tmp_path):
    model = make_model("llama")
    editor = masked_editor(model)
    editor.save_pretrained(tmp_path / "art")

    other = make_model("gpt2")  # other module names
    before = state(other)
    with pytest.raises(DeanError, match="another architecture"):
        DeanEditor.from_pretrained(other, tmp_path / "art")
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())

    from transformers import AutoModelForCausalLM
    from conftest import tiny_config

    cfg = tiny_config("llama")
    cfg.intermediate_size = 64  # same names, other shapes
    wide = AutoModelForCausalLM.from_config(cfg)
    before = state(wide)
    with pytest.raises(DeanError, match="shape"):
        DeanEditor.from_pretrained(wide, tmp_path / "art")
    assert all(torch.equal(v, before[k]) for k, v in wide.state_dict().items())

    same_arch = make_model("llama", seed=123)  # same names and shapes, other weights
    before = state(same_arch)
    with pytest.raises(DeanError, match="other weights"):
        DeanEditor.from_pretrained(same_arch, tmp_path / "art")
    assert all(torch.equal(v, before[k]) for k, v in same_arch.state_dict().items())
    forced = DeanEditor.from_pretrained(same_arch, tmp_path / "art", check_base_model=False)
    assert forced.active_mask == "default"


def test_fingerprint_accepts_bf16_copy_and_merged_copy(tmp_path):
    model = make_model("llama")
    editor = masked_editor(model)
    editor.save_pretrained(tmp_path / "art")
    from dean_hf.hub import load_artifact

    config, mask = load_artifact(tmp_path / "art")
    assert set(mask) <= set(config.base_model_fingerprint["probes"])  # every masked module is checked
    bf16 = make_model("llama", dtype=torch.bfloat16)
    expected = {n: p.detach().clone() for n, p in bf16.named_parameters()}
    for name, idx in mask.items():
        expected[f"{name}.weight"].view(-1)[idx] = 0
    DeanEditor.from_pretrained(bf16, tmp_path / "art")  # accepted: the bf16 copy is masked
    assert all(torch.equal(p, expected[n]) for n, p in bf16.named_parameters())
    merged = editor.merge_and_unload()
    zeroed = {n: p.detach().clone() for n, p in merged.named_parameters()}
    DeanEditor.from_pretrained(merged, tmp_path / "art")  # accepted: an already-zeroed copy of the same base
    assert all(torch.equal(p, zeroed[n]) for n, p in merged.named_parameters())


def test_fit_end_to_end(tokenizer):
    model = make_model("llama")
    base = logits(model, IDS)
    config = DeanConfig(q=0.2, p=0.05, num_samples=4, max_length=64)
    editor = DeanEditor(model, config)
    mask = editor.fit(tokenizer, targets={"fairness": pairs(6), "privacy": pairs(6, offset=2)},
                      general=pairs(6, offset=4), show_progress=False)
    assert mask.num_masked > 0 and editor.active_mask == "default"
    assert editor.dean_config.base_model_fingerprint is not None
    assert editor.dean_config.target_datasets == ["fairness", "privacy"]
    assert not torch.equal(logits(editor, IDS), base)
    assert torch.equal(logits(editor.unload(), IDS), base)


def test_generate_through_editor(tokenizer):
    model = make_model("llama")
    editor = masked_editor(model)
    out = editor.generate(input_ids=IDS, max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert out.shape == (1, IDS.shape[1] + 3)


def test_config_round_trip_and_unknown_keys(tmp_path, caplog):
    config = DeanConfig(q=1e-3, p=2e-3, target_modules=["up_proj"])
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "dean_config.json").read_text())
    data["future_option"] = 1
    (tmp_path / "dean_config.json").write_text(json.dumps(data))
    loaded = DeanConfig.from_pretrained(tmp_path)
    assert loaded == config
    data["dean_hf_version"] = "99.0.0"
    with pytest.raises(DeanError, match="newer"):
        DeanConfig.from_dict(data)
    with pytest.raises(DeanError, match="q="):
        DeanConfig(q=0)
    assert all(f.metadata.get("help") for f in DeanConfig.__dataclass_fields__.values())


def test_push_to_hub_one_commit(hub_calls):
    model = make_model("llama")
    editor = masked_editor(model)
    editor.add_adapter("strict", fitted_mask(model, q=0.2))
    assert editor.push_to_hub("user/mask", private=True) == "https://huggingface.co/user/mask/commit/0"
    creates = [c for c in hub_calls if c["op"] == "create"]
    uploads = [c for c in hub_calls if c["op"] == "upload"]
    assert [c["repo_id"] for c in creates] == ["user/mask"] and creates[0]["private"] is True
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "user/mask"  # every mask in one commit
    assert uploads[0]["files"] == ["README.md", "dean_config.json", "dean_mask.safetensors", "strict/README.md",
                                   "strict/dean_config.json", "strict/dean_mask.safetensors"]
    hub_calls.clear()
    editor.push_to_hub("user/only-strict", selected_adapters=["strict"])
    (upload,) = [c for c in hub_calls if c["op"] == "upload"]
    assert upload["files"] == ["strict/README.md", "strict/dean_config.json", "strict/dean_mask.safetensors"]
    hub_calls.clear()
    editor.push_to_hub("user/merged", merged=True)
    (upload,) = [c for c in hub_calls if c["op"] == "upload"]
    assert {"README.md", "model.safetensors", "config.json"} <= set(upload["files"])
    assert not any(f.startswith(".dean_hf-staging") for f in upload["files"])


def test_push_fails_fast_offline(monkeypatch):
    import socket

    import huggingface_hub.constants as constants
    from dean_hf.hub import check_hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DeanError, match="HF_HUB_OFFLINE"):
        check_hub_reachable()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    tried = []

    def no_network(address, timeout=None):
        tried.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    editor = masked_editor(make_model("llama"))
    with pytest.raises(DeanError, match="cannot reach the Hub"):
        editor.push_to_hub("user/mask")
    assert len(tried) == 1 and tried[0][1] <= 5  # one short probe, no retries


def test_from_pretrained_offline_hub_cache(tmp_path, monkeypatch):
    model = make_model("llama")
    editor = masked_editor(model)
    art = tmp_path / "art"
    editor.save_pretrained(art)
    expected = logits(editor.merge_and_unload(), IDS)
    # A pre-filled Hub cache, as hf_hub_download leaves it.
    cache = tmp_path / "hub"
    repo = cache / "models--user--dean-mask"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in art.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    loaded = DeanEditor.from_pretrained(make_model("llama"), "user/dean-mask")
    assert torch.equal(logits(loaded, IDS), expected)
    with pytest.raises(DeanError, match="not in the local cache"):
        DeanEditor.from_pretrained(make_model("llama"), "user/absent")


def test_card_lists_hub_datasets(tmp_path):
    from dean_hf.hub import render_card

    model = make_model("llama")
    editor = masked_editor(model)
    config = editor.configs["default"]
    config.dataset_sources = {"fairness": "PKU-Alignment/BeaverTails", "general": str(tmp_path / "alpaca.csv")}
    card = str(render_card(config, editor.masks["default"]))
    assert "datasets:\n- PKU-Alignment/BeaverTails" in card and "alpaca.csv" not in card.split("---")[1]


def test_card_links_only_what_exists(tmp_path):
    from dean_hf.hub import render_card

    editor = masked_editor(make_model("llama"))
    config = editor.peft_config["default"]
    card = render_card(config, editor.masks["default"])
    links = re.findall(r"\]\((https?://[^)]+)\)", card)
    assert links == ["https://arxiv.org/abs/2410.16672"]  # the paper; no invented repository link
    config.base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    links = re.findall(r"\]\((https?://[^)]+)\)", render_card(config, editor.masks["default"]))
    assert "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct" in links
