"""transformers and PEFT habits on a DeanEditor: pipelines, Trainer, print_trainable_parameters."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_model

from dean_hf import DeanEditor, NeuronMask
from dean_hf.errors import DeanError

pytestmark = pytest.mark.floors


def _mask(model, counts={"model.layers.0.mlp.up_proj": 12, "model.layers.1.self_attn.o_proj": 5}, scale=0.0):
    modules = dict(model.named_modules())
    shapes = {n: tuple(modules[n].weight.shape) for n in counts}
    return NeuronMask({n: torch.arange(0, 3 * k, 3) for n, k in counts.items()}, shapes, scale=scale)


def _editor():
    model = make_model("llama")
    editor = DeanEditor(model)
    editor.add_adapter("default", _mask(model), check_base_model=False)
    editor.set_adapter("default")
    return editor


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_text_generation_pipeline_takes_the_editor_without_an_error(monkeypatch, tokenizer):
    from transformers import pipeline
    from transformers.pipelines import base

    editor = _editor()
    # as if transformers' pipelines were imported only after the editor was made
    monkeypatch.setitem(base.SUPPORTED_PEFT_TASKS, "text-generation",
                        [n for n in base.SUPPORTED_PEFT_TASKS["text-generation"] if n != "DeanEditor"])
    records = _Records()
    pipeline_logger = logging.getLogger("transformers.pipelines.base")
    pipeline_logger.addHandler(records)
    try:
        generate = pipeline("text-generation", model=editor, tokenizer=tokenizer)
        out = generate("What is the capital of France?", max_new_tokens=4, do_sample=False, return_full_text=False)
    finally:
        pipeline_logger.removeHandler(records)
    assert not [m for m in records.messages if "not supported" in m], records.messages[:1]
    ids = tokenizer("What is the capital of France?", return_tensors="pt").input_ids
    expected = editor.model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:]
    assert out[0]["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True)  # the masked model ran


def test_trainer_is_refused_at_once_with_the_fix(tmp_path):
    from transformers import Trainer, TrainingArguments

    editor = _editor()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], max_steps=1)
    with pytest.raises(DeanError, match="DeanCallback") as err:
        Trainer(model=editor, args=args)
    assert "get_base_model()" in str(err.value)
    assert not (tmp_path / "out").exists()
    model = editor.get_base_model()  # the fix: the model itself is accepted
    assert Trainer(model=model, args=args).model is model


def test_print_trainable_parameters_says_what_a_mask_means(capsys):
    editor = _editor()
    total = sum(p.numel() for p in editor.model.parameters())
    editor.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    assert line == (f"trainable params: 0 (a DEAN mask adds none) || all params: {total:,} || mask 'default' "
                    f"(active): zeroes 17 of 2560 ({17 / 2560:.3g}) weights")  # up_proj 48 x 32 + o_proj 32 x 32
    editor.add_adapter("half", _mask(editor.model, {"model.layers.0.mlp.down_proj": 4}, scale=0.5),
                       check_base_model=False)
    editor.print_trainable_parameters()
    assert f"mask 'half': scales by 0.5 4 of 1536 ({4 / 1536:.3g}) weights" in capsys.readouterr().out
    DeanEditor(make_model("llama")).print_trainable_parameters()
    assert capsys.readouterr().out.strip().endswith("|| no DEAN mask loaded")
