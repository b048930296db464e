"""Weights split over devices or offloaded by accelerate (to the CPU, to disk): scores equal the plain run's, masks
apply and unload exactly, and the backward pass does not keep offloaded weights."""

import copy

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanEditor, DeanError, score_importance, select_coupled_neurons
from dean_hf.offload import is_offloaded

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 8]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def max_rel(a, b):
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max()).item() for n in b)


@pytest.fixture(scope="module")
def reference():
    model = make_model("llama")
    examples = random_examples(4)
    scores = score_importance(model, examples, keep=1.0, show_progress=False)
    other = score_importance(model, random_examples(4, seed=2), keep=1.0, show_progress=False)
    mask = select_coupled_neurons({"f": scores, "p": other}, None, q=0.1)
    editor = DeanEditor(model)
    editor.add_adapter("default", mask)
    editor.set_adapter("default")
    masked = logits(model)
    editor.unload()
    return {"model": model, "examples": examples, "scores": scores, "mask": mask, "base": logits(model),
            "masked": masked}


def offloaded(kind, model, tmp_path):
    from accelerate import cpu_offload, disk_offload, dispatch_model

    model = copy.deepcopy(model)
    if kind == "cpu_offload":
        return cpu_offload(model, execution_device="cpu")
    if kind == "disk_offload":
        return disk_offload(model, str(tmp_path / "offload"), execution_device="cpu")
    # a device_map that really splits the model: layer 0 resident on the CPU, layer 1 and the head on disk
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "disk"}
    return dispatch_model(model, device_map=device_map, main_device="cpu", offload_dir=str(tmp_path / "offload"))


@pytest.mark.parametrize("kind", ["cpu_offload", "disk_offload", "device_map"])
def test_offloaded_models_score_and_mask_like_the_plain_one(kind, reference, tmp_path, monkeypatch):
    import dean_hf.offload as offload

    model = offloaded(kind, reference["model"], tmp_path)
    layer0 = model.model.layers[0].mlp.up_proj
    assert is_offloaded(model.model.layers[1].mlp.up_proj) and is_offloaded(layer0) == (kind != "device_map")
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    streamed = []

    class Counted(offload._Reference):
        def __init__(self, *args):
            super().__init__(*args)
            streamed.append(self.name)

    monkeypatch.setattr(offload, "_Reference", Counted)
    scores = score_importance(model, reference["examples"], keep=1.0, show_progress=False)
    assert max_rel(scores, reference["scores"]) < 1e-5
    assert "weight" in streamed  # autograd kept references to offloaded weights, not the weights
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # still offloaded afterwards

    editor = DeanEditor(model)
    editor.add_adapter("default", reference["mask"])
    editor.set_adapter("default")
    assert torch.allclose(logits(model), reference["masked"], atol=1e-6)
    with editor.disable_adapter():
        assert torch.allclose(logits(model), reference["base"], atol=1e-6)
    editor.unload()
    assert torch.allclose(logits(model), reference["base"], atol=1e-6)  # the stored weights were never changed


def test_merging_into_cpu_offloaded_weights_keeps_the_zeros(reference, tmp_path):
    model = offloaded("cpu_offload", reference["model"], tmp_path)
    editor = DeanEditor(model)
    editor.add_adapter("default", reference["mask"])
    editor.set_adapter("default")
    merged = editor.merge_and_unload()
    assert torch.allclose(logits(merged), reference["masked"], atol=1e-6)
    assert DeanEditor(merged).active_adapter is None  # plain again; the zeros are in the stored weights
    from dean_hf.offload import offload_hook

    name, idx = next((n, i) for n, i in reference["mask"].items() if i.numel())
    module = dict(merged.named_modules())[name]
    assert (offload_hook(module).weights_map["weight"].view(-1)[idx] == 0).all()


def test_disk_offloaded_weights_cannot_be_merged_and_masks_stay_removable(reference, tmp_path):
    """Merging into weights read from disk at each load is refused before any change; a second mask applied after
    that still comes off exactly (hooks are kept flat)."""
    model = offloaded("disk_offload", reference["model"], tmp_path)
    editor = DeanEditor(model)
    editor.add_adapter("a", reference["mask"])
    editor.set_adapter("a")
    with pytest.raises(DeanError, match="offloaded to disk"):
        editor.merge_and_unload()
    assert editor.active_adapter == "a" and torch.allclose(logits(model), reference["masked"], atol=1e-6)
    editor.add_adapter("b", reference["mask"])
    editor.set_adapter("b")
    editor.set_adapter("a")
    editor.unload()
    assert torch.allclose(logits(model), reference["base"], atol=1e-6)
    from accelerate.hooks import SequentialHook

    assert not any(isinstance(getattr(m, "_hf_hook", None), SequentialHook) for m in model.modules())
