"""DeanCallback: masked weights stay exactly zero through Trainer steps; scores collected during training."""

import pytest
import torch

from conftest import make_model, random_examples
from dean_hf import DeanError, NeuronMask, score_importance, select_coupled_neurons
from dean_hf.callback import DeanCallback


def train(model, callback=None, *, steps=4, lr=1e-2, accumulation=1, tmp_path=None, examples=None):
    import datasets
    from transformers import Trainer, TrainingArguments

    examples = examples or random_examples(8, seed=4)
    ds = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, max_steps=steps,
                             learning_rate=lr, gradient_accumulation_steps=accumulation, weight_decay=0.1,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                             disable_tqdm=True, seed=0, optim="adamw_torch")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback] if callback else [])
    trainer.train()
    return model


def make_mask(model, q=0.05):
    s = score_importance(model, random_examples(3), show_progress=False)
    return select_coupled_neurons({"f": s, "p": s}, None, q=q)


def masked_values(model, mask):
    modules = dict(model.named_modules())
    return torch.cat([modules[n].weight.detach().reshape(-1)[idx] for n, idx in mask.items()])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_masked_weights_stay_zero(tmp_path, accumulation):
    model = make_model("llama")
    mask = make_mask(model)
    assert mask.num_masked > 0
    train(model, DeanCallback(mask), accumulation=accumulation, tmp_path=tmp_path)
    assert torch.equal(masked_values(model, mask), torch.zeros(mask.num_masked))

    control = make_model("llama")  # same start, no callback: the same entries move away from zero
    modules = dict(control.named_modules())
    with torch.no_grad():
        for n, idx in mask.items():
            modules[n].weight.view(-1)[idx] = 0
    train(control, None, accumulation=accumulation, tmp_path=tmp_path)
    assert (masked_values(control, mask) != 0).sum() > mask.num_masked // 2


def test_lora_model_keeps_base_entries_zero(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = make_model("llama")
    mask = make_mask(model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "up_proj"], lora_alpha=4))
    train(peft_model, DeanCallback(mask), tmp_path=tmp_path)
    base = peft_model.get_base_model()
    modules = {n: m for n, m in base.named_modules()}
    for name, idx in mask.items():
        module = modules.get(name) or modules[name.replace("q_proj", "q_proj.base_layer")]
        weight = module.get_base_layer().weight if hasattr(module, "get_base_layer") else module.weight
        assert (weight.detach().reshape(-1)[idx] == 0).all()


def test_scores_collected_during_training_equal_score_importance(tmp_path):
    examples = random_examples(4, seed=5)
    model = make_model("llama")
    callback = DeanCallback(collect_scores=True)
    train(model, callback, steps=4, lr=0.0, tmp_path=tmp_path, examples=examples)  # lr 0: weights do not move
    expected = score_importance(make_model("llama"), examples, show_progress=False)
    assert callback.scores is not None and list(callback.scores) == list(expected)
    worst = max(((callback.scores[n] - expected[n]).abs().max() / expected[n].abs().max()).item() for n in expected)
    assert worst < 1e-4
    assert all(not m._forward_hooks for m in model.modules())
    assert callback.scores.metadata["num_samples"] == 4
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_callback_errors():
    with pytest.raises(DeanError, match="needs a mask"):
        DeanCallback()
    mask = NeuronMask({"model.layers.0.mlp.up_proj": torch.tensor([0])}, {"model.layers.0.mlp.up_proj": (2, 2)})
    with pytest.raises(DeanError, match="shape"):
        DeanCallback(mask).on_train_begin(None, None, None, model=make_model("llama"))


def enable_checkpointing(model, reentrant):
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (gradient_checkpointing_enable: alias)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@pytest.mark.parametrize("reentrant", [True, False])
def test_scores_and_samples_unchanged_by_gradient_checkpointing(tmp_path, reentrant):
    examples = random_examples(6, seed=5)
    plain = DeanCallback(collect_scores=True)
    train(make_model("llama"), plain, steps=3, accumulation=2, tmp_path=tmp_path, examples=examples)

    model = make_model("llama")
    enable_checkpointing(model, reentrant)
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]  # HF's own
    calls = []
    probe = model.model.layers[0].mlp.up_proj.register_forward_hook(lambda *a: calls.append(1))
    checkpointed = DeanCallback(collect_scores=True)
    train(model, checkpointed, steps=3, accumulation=2, tmp_path=tmp_path, examples=examples)
    probe.remove()
    assert len(calls) == 2 * 6  # checkpointing is on: each block ran again during the backward pass

    assert plain.scores.metadata["num_samples"] == checkpointed.scores.metadata["num_samples"] == 6
    assert list(checkpointed.scores) == list(plain.scores)
    assert all(torch.equal(checkpointed.scores[n], plain.scores[n]) for n in plain.scores)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks_before


def test_mask_indices_are_moved_to_the_weights_once(monkeypatch):
    model = make_model("llama")
    mask = make_mask(model)
    modules = dict(model.named_modules())
    callback = DeanCallback(mask)
    callback.on_train_begin(None, None, None, model=model)

    def step():  # the gradients and the weights move; the callback re-zeroes the masked entries
        for name in mask:
            modules[name].weight.grad = torch.ones_like(modules[name].weight)
            with torch.no_grad():
                modules[name].weight.add_(1.0)
        callback.on_pre_optimizer_step(None, None, None)
        callback.on_optimizer_step(None, None, None)
        for name, idx in mask.items():
            assert (modules[name].weight.grad.view(-1)[idx] == 0).all()
            assert (modules[name].weight.detach().view(-1)[idx] == 0).all()

    copies = []
    original_to = torch.Tensor.to
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "to", lambda self, *a, **k: copies.append(1) or original_to(self, *a, **k))
        for _ in range(3):
            step()
    assert copies == []  # no index copied (to the weight's device) per step

    cached = dict(callback._indices)  # moved once, at on_train_begin, to each weight's device; reused by every step
    assert list(cached) == list(mask)
    assert all(cached[n].device == modules[n].weight.device and torch.equal(cached[n], mask[n]) for n in mask)
    step()
    assert all(callback._indices[n] is cached[n] for n in mask)
