"""The editor behaves as a PEFT user expects: PEFT's adapter scenarios (save/load/switch/disable/delete/merge/unload),
an nn.Module wrapper, state that cannot be corrupted, and models as users hold them (compiled, PEFT, tied)."""

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import IDS, logits, make_model, random_examples, same_weights, tiny_config, weights
from dean_hf import DeanConfig, DeanEditor, DeanError, NeuronMask, score_importance, select_coupled_neurons



_MASKS = {}


def mask_for(arch="llama", q=0.05, seed=0):
    """A real selected mask of the tiny `arch` model (seed 0), cached per setting."""
    key = (arch, q, seed)
    if key not in _MASKS:
        model = make_model(arch)
        f, p, g = (score_importance(model, random_examples(4, seed=s + seed), show_progress=False) for s in (1, 2, 3))
        _MASKS[key] = select_coupled_neurons({"fairness": f, "privacy": p}, g, q=q, p=q)
    return _MASKS[key]


def applied_by_hand(mask, arch="llama"):
    """A fresh model with `mask`'s weights zeroed by hand: what the editor's model must equal."""
    model = make_model(arch)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, idx in mask.items():
            modules[name].weight.view(-1)[idx] = 0
    return model


# ---------------------------------------------------------------- an nn.Module wrapper, as PeftModel
def test_editor_is_a_module_wrapper():
    model = make_model("llama")
    editor = DeanEditor(model)
    assert isinstance(editor, nn.Module) and editor.get_base_model() is model and editor.base_model.model is model
    assert editor.config is model.config  # the model's config, as PeftModel.config
    assert editor.to(torch.float32) is editor and editor.eval() is editor and editor.train() is editor
    assert model.training and editor.eval() is editor and not model.training
    assert editor.dtype == torch.float32 and editor.device.type == "cpu"  # attributes fall through
    assert torch.equal(editor(input_ids=IDS).logits, model(input_ids=IDS).logits)
    assert "input_ids" in inspect.signature(editor.forward).parameters  # Trainer reads it to keep columns
    with pytest.raises(AttributeError):
        editor.no_such_attribute
    assert "masks=[]" in repr(editor)


@pytest.mark.parametrize("name", ["merge_adapter", "unmerge_adapter", "add_weighted_adapter",
                                  "get_nb_trainable_parameters", "disable_adapter_layers"])
def test_peft_names_without_meaning_say_so(name):
    editor = DeanEditor(make_model("llama"))
    with pytest.raises(DeanError, match=f"does not support PEFT's '{name}'"):
        getattr(editor, name)
    assert not hasattr(editor, name)


def test_peft_config_and_dean_config():
    editor = DeanEditor(make_model("llama"), DeanConfig(q=1e-3, p=1e-3))
    assert editor.dean_config.q == 1e-3 and editor.peft_config == {} and editor.active_adapters == []
    editor.add_adapter("default", mask_for(), DeanConfig(q=0.05, p=0.05))
    editor.set_adapter("default")
    assert editor.active_adapter == editor.active_mask == "default" and editor.active_adapters == ["default"]
    assert editor.dean_config.q == 0.05 and editor.peft_config["default"].q == 0.05
    with pytest.raises(DeanError, match="takes a NeuronMask"):
        editor.add_adapter("other", DeanConfig())  # PEFT's add_adapter(name, config) habit


def test_summary(capsys):
    editor = DeanEditor(make_model("llama"))
    assert editor.mask_summary() == "no DEAN mask loaded"
    editor.add_adapter("default", mask_for())
    editor.set_adapter("default")
    editor.print_mask_summary()
    out = capsys.readouterr().out
    assert f"mask 'default' (active): zeroed weights: {mask_for().num_masked} of {mask_for().num_weights}" in out


def test_trainer_trains_the_editors_base_model(tmp_path):
    import datasets
    from transformers import Trainer, TrainingArguments

    editor = DeanEditor(make_model("llama"))  # Trainer(model=editor) is refused: see test_habits.py
    rows = [{"input_ids": ex["input_ids"][:8], "labels": ex["input_ids"][:8]} for ex in random_examples(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=1, report_to=[],
                             use_cpu=True, save_strategy="no")
    Trainer(model=editor.get_base_model(), args=args, train_dataset=datasets.Dataset.from_list(rows)).train()


# ---------------------------------------------------------------- PEFT's adapter scenarios, on masks
def test_save_and_load_round_trip(tmp_path):
    editor = DeanEditor(make_model("llama"), DeanConfig(q=0.05, p=0.05))
    editor.add_adapter("default", mask_for())
    editor.set_adapter("default")
    expected = logits(editor)
    editor.save_pretrained(tmp_path)
    loaded = DeanEditor.from_pretrained(make_model("llama"), tmp_path)
    assert torch.equal(logits(loaded), expected) and loaded.active_adapter == "default"
    assert loaded.masks["default"].digest() == editor.masks["default"].digest()
    assert loaded.peft_config["default"].mask_digest == editor.masks["default"].digest()


def test_save_selected_adapters_and_load_each(tmp_path):
    editor = DeanEditor(make_model("llama"))
    editor.add_adapter("default", mask_for(q=0.05))
    editor.add_adapter("strict", mask_for(q=0.2))
    editor.save_pretrained(tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["README.md", "dean_config.json",
                                                                    "dean_mask.safetensors", "strict"]
    editor.save_pretrained(tmp_path / "one", selected_adapters=["strict"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["strict"]
    with pytest.raises(ValueError, match="selected_adapters"):  # DeanError is a ValueError, as PEFT's error
        editor.save_pretrained(tmp_path / "bad", selected_adapters=["missing"])
    editor.save_pretrained(tmp_path / "not-main", is_main_process=False)
    assert not (tmp_path / "not-main").exists()

    loaded = DeanEditor.from_pretrained(make_model("llama"), tmp_path / "all")
    loaded.load_adapter(tmp_path / "all", adapter_name="strict", subfolder="strict")
    for name in ("default", "strict"):
        loaded.set_adapter(name)
        assert torch.equal(logits(loaded), logits(applied_by_hand(editor.masks[name]))), name


def test_switch_disable_delete_unload_merge():
    model = make_model("llama")
    base, original = logits(model), weights(model)
    editor = DeanEditor(model)
    editor.add_adapter("a", mask_for(q=0.05))
    editor.add_mask("b", mask_for(q=0.2))  # dean_hf's name for the same call
    assert editor.active_adapter is None and torch.equal(logits(editor), base)  # added, not applied
    editor.set_adapter("a")
    la = logits(editor)
    editor.set_mask("b")
    lb = logits(editor)
    assert torch.equal(la, logits(applied_by_hand(mask_for(q=0.05))))
    assert torch.equal(lb, logits(applied_by_hand(mask_for(q=0.2))))
    with editor.disable_adapter():
        assert torch.equal(logits(editor), base) and same_weights(model, original)
    assert torch.equal(logits(editor), lb) and editor.active_adapters == ["b"]
    with pytest.raises(ValueError, match="no mask named 'c'"):
        editor.set_adapter("c")
    editor.delete_adapter("b")  # the active one: the weights come back
    assert editor.active_adapter is None and same_weights(model, original)
    editor.set_adapter("a")
    assert editor.unload() is model and same_weights(model, original) and not editor.masks

    editor = DeanEditor(model)
    editor.add_adapter("a", mask_for(q=0.05))
    editor.add_adapter("b", mask_for(q=0.2))
    editor.set_adapter("a")
    merged = editor.merge_and_unload(adapter_names=["b"])  # PEFT's argument: merge that one
    assert merged is model and torch.equal(logits(merged), lb) and not editor.masks
    assert DeanEditor(model).active_adapter is None  # a plain model again, nothing left to restore


# ---------------------------------------------------------------- state that cannot be corrupted
@pytest.mark.parametrize("call", [
    lambda e: e.set_adapter("b"), lambda e: e.add_adapter("c", mask_for(q=0.1)), lambda e: e.delete_adapter("a"),
    lambda e: e.delete_adapter("b"), lambda e: e.unload(), lambda e: e.merge_and_unload(),
])
def test_disable_block_refuses_changes_and_stays_exact(call):
    model = make_model("llama")
    original = weights(model)
    editor = DeanEditor(model)
    editor.add_adapter("a", mask_for(q=0.05))
    editor.add_adapter("b", mask_for(q=0.2))
    editor.set_adapter("a")
    masked = logits(editor)
    with editor.disable_adapter():
        with pytest.raises(DeanError, match="inside `disable_adapter"):
            call(editor)
        assert same_weights(model, original)
    assert torch.equal(logits(editor), masked) and list(editor.masks) == ["a", "b"]
    editor.unload()
    assert same_weights(model, original)


def test_second_editor_shares_the_masks():
    model = make_model("llama")
    original = weights(model)
    first = DeanEditor(model)
    first.add_adapter("default", mask_for())
    first.set_adapter("default")
    second = DeanEditor(model)  # a notebook cell run twice, say
    assert second.active_adapter == "default" and list(second.masks) == ["default"]
    second.unload()  # the true originals, not the edited weights
    assert same_weights(model, original) and not first.masks and first.active_adapter is None


def test_fit_checks_every_argument_before_scoring(tokenizer, monkeypatch):
    import dean_hf.scoring.engine as engine

    def must_not_score(*args, **kwargs):
        raise AssertionError("scoring started before the arguments were checked")

    monkeypatch.setattr(engine, "score_importance", must_not_score)
    monkeypatch.setattr("dean_hf.pipeline.score_importance", must_not_score)
    editor = DeanEditor(make_model("llama"), DeanConfig(num_samples=2, q=0.1, p=0.1))
    editor.add_adapter("default", mask_for())
    data = [{"prompt": "Hi", "response": "Hello there"}] * 3
    with pytest.raises(DeanError, match="exists already"):
        editor.fit(tokenizer, {"fairness": data, "privacy": data}, data)
    with pytest.raises(DeanError, match="adapter_name"):
        editor.fit(tokenizer, {"fairness": data, "privacy": data}, data, adapter_name="a/b")
    with pytest.raises(DeanError, match="tokenizer"):
        editor.fit(None, {"fairness": data, "privacy": data}, data, adapter_name="new")
    with pytest.raises(DeanError, match="targets is empty"):
        editor.fit(tokenizer, {}, data, adapter_name="new")
    with pytest.raises(DeanError, match="holds 3 rows"):
        DeanEditor(make_model("llama"), DeanConfig(num_samples=5)).fit(tokenizer, {"fairness": data}, data)


_OPS = st.lists(st.tuples(st.sampled_from(["add", "set", "delete", "disable", "unload", "merge"]),
                          st.sampled_from(["a", "b", "c"])), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_random_operation_sequences_stay_exact(ops):
    """After every operation the model equals a fresh model with the active mask applied by hand; unload is exact."""
    masks = {"a": mask_for(q=0.05), "b": mask_for(q=0.2), "c": mask_for(q=0.1, seed=5)}
    model = make_model("llama")
    original = weights(model)
    editor = DeanEditor(model)
    merged = None
    for op, name in ops:
        try:
            if op == "add":
                editor.add_adapter(name, masks[name])
            elif op == "set":
                editor.set_adapter(name)
            elif op == "delete":
                editor.delete_adapter(name)
            elif op == "disable":
                with editor.disable_adapter():
                    assert same_weights(model, original)
                    editor.set_adapter(name)  # refused inside the block
            elif op == "unload":
                editor.unload()
                assert same_weights(model, original)
            elif op == "merge":
                merged = editor.active_adapter
                editor.merge_and_unload()
                break
        except DeanError:
            pass
        active = editor.active_adapter
        expected = applied_by_hand(masks[active]) if active else make_model("llama")
        assert same_weights(model, weights(expected)), (op, name, active)
    if merged is not None:  # merged for good: the zeros stay, nothing is restorable
        assert same_weights(model, weights(applied_by_hand(masks[merged]) if merged else make_model("llama")))
    else:
        editor.unload()
        assert same_weights(model, original)


# ---------------------------------------------------------------- models as users hold them
def test_compiled_and_peft_wrapped_models_take_the_same_mask():
    from peft import LoraConfig, get_peft_model

    mask = mask_for()
    expected = weights(applied_by_hand(mask))

    compiled = torch.compile(make_model("llama"), backend="eager")
    editor = DeanEditor(compiled)
    editor.add_adapter("default", mask)
    editor.set_adapter("default")
    assert same_weights(compiled._orig_mod, expected)
    scores = score_importance(compiled, random_examples(2), show_progress=False)
    assert set(scores) == set(mask)  # canonical names, no `_orig_mod.`
    editor.unload()

    peft_model = get_peft_model(make_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "up_proj"]))
    original = {k: v.clone() for k, v in peft_model.get_base_model().state_dict().items()}
    editor = DeanEditor(peft_model)
    editor.add_adapter("default", mask)
    editor.set_adapter("default")
    base = peft_model.get_base_model()
    layer = base.model.layers[0].mlp.up_proj.base_layer  # LoRA's wrapped Linear holds the weights
    assert torch.equal(layer.weight.view(-1)[mask["model.layers.0.mlp.up_proj"]],
                       torch.zeros(mask["model.layers.0.mlp.up_proj"].numel()))
    editor.unload()
    assert all(torch.equal(v, original[k]) for k, v in base.state_dict().items())


def test_tied_output_head_is_refused():
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    mask = NeuronMask({"lm_head": torch.tensor([0, 5])}, {"lm_head": tuple(model.lm_head.weight.shape)})
    original = weights(model)
    editor = DeanEditor(model)
    with pytest.raises(DeanError, match="shares its weight with the input embeddings"):
        editor.add_adapter("default", mask)
    assert same_weights(model, original) and not editor.masks


def test_meta_weights_give_a_clear_error():
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(DeanError, match="meta device"):
        DeanEditor(model).add_adapter("default", mask_for())


def test_loading_a_model_by_name_passes_options_on(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = make_model("llama")
    model.save_pretrained(tmp_path / "model")
    editor = DeanEditor(model)
    editor.add_adapter("default", mask_for())
    editor.save_pretrained(tmp_path / "mask")
    editor.unload()
    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        kwargs.pop("revision", None)
        return real(path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    loaded = DeanEditor.from_pretrained(str(tmp_path / "model"), tmp_path / "mask", torch_dtype=torch.bfloat16,
                                        device_map="cpu", model_revision="v1", check_base_model=True)
    assert seen["dtype"] is torch.bfloat16 and seen["device_map"] == "cpu" and seen["revision"] == "v1"
    assert loaded.dtype == torch.bfloat16 and loaded.active_adapter == "default"


def test_fit_takes_the_clis_data_names(tokenizer, tmp_path):
    model = make_model("llama")
    original = weights(model)
    editor = DeanEditor(model, DeanConfig(q=0.2, p=0.05, num_samples=3, max_length=64))
    mask = editor.fit(tokenizer, {"fairness": "embedded:fairness", "privacy": "embedded:privacy"}, "embedded:general",
                      show_progress=False, cache_dir=tmp_path / "scores")
    assert mask.num_masked > 0 and editor.dean_config.dataset_sources == {
        "fairness": "embedded:fairness", "privacy": "embedded:privacy", "general": "embedded:general"}
    assert sorted(p.name for p in (tmp_path / "scores").glob("*.safetensors")) == [
        "fairness.safetensors", "general.safetensors", "privacy.safetensors"]
    editor.unload()
    assert same_weights(model, original)


def test_load_adapter_takes_pefts_loading_options(tmp_path):
    editor = DeanEditor(make_model("llama"))
    editor.add_adapter("default", mask_for())
    editor.save_pretrained(tmp_path)
    other = DeanEditor(make_model("llama"))
    other.load_adapter(tmp_path, "default", torch_device="cpu", low_cpu_mem_usage=True, autocast_adapter_dtype=True)
    assert other.masks["default"].digest() == mask_for().digest()
    with pytest.raises(DeanError, match="unknown options"):
        other.load_adapter(tmp_path, "second", bogus=1)
