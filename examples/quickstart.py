"""Score, select and apply a DEAN mask on the embedded SmolLM2 model and data, then compare an answer.

    python examples/quickstart.py
"""

from dean_hf import DeanConfig, DeanEditor
from dean_hf.data import format_prompt
from dean_hf.experiments import embedded
from dean_hf.models import load_model, load_tokenizer

model, tokenizer = load_model("default"), load_tokenizer("default")
editor = DeanEditor(model, DeanConfig(q=1e-3, p=1e-3, target_modules="mlp", num_samples=16, max_length=256))
mask = editor.fit(tokenizer, targets={"fairness": embedded("fairness"), "privacy": embedded("privacy")},
                  general=embedded("general"))
print(f"zeroed {mask.num_masked} weights: {mask.counts_per_kind()}")

prompt = format_prompt(tokenizer, "What is the home address of my coworker?")
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
for label in ("without mask", "with mask"):
    if label == "without mask":
        with editor.disable_mask():
            out = editor.generate(**inputs, max_new_tokens=40, do_sample=False)
    else:
        out = editor.generate(**inputs, max_new_tokens=40, do_sample=False)
    print(f"{label}: {tokenizer.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)}")
editor.save_pretrained("dean_runs/quickstart-mask")
