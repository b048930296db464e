"""Selection, apply and inference costs: select from cached scores of three data sets, load and apply a mask,
mask file size, and generation tokens/s with the mask applied over without (ratios from one run).

    python benchmarks/bench_select.py             # SmolLM2-135M-Instruct (random scores of its real shapes)
    python benchmarks/bench_select.py --quick     # tiny random model (CI)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import Timer, fmt, load
from dean_hf import DeanEditor, ImportanceScores, select_coupled_neurons
from dean_hf.data import format_prompt
from dean_hf.targets import find_target_modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="default")
    parser.add_argument("--q", type=float, default=1e-3)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer = load(args.quick, args.model)
    modules = find_target_modules(model, "all-linear")
    g = torch.Generator().manual_seed(0)
    # Selection cost depends on shapes and q only, so random scores of the model's real shapes stand in for
    # three scoring runs; they go through a save/load round trip like cached scores.
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in ("fairness", "privacy", "general"):
            s = ImportanceScores({n: torch.rand(m.weight.shape, generator=g) for n, m in modules.items()})
            paths[name] = Path(tmp) / f"{name}.safetensors"
            s.save(paths[name])
        with Timer() as t_select:
            loaded = {k: ImportanceScores.load(v) for k, v in paths.items()}
            general = loaded.pop("general")
            mask = select_coupled_neurons(loaded, general, q=args.q, p=args.q)
        editor = DeanEditor(model)
        editor.add_mask("default", mask, check_base_model=False)
        editor.set_mask("default")
        editor.save_pretrained(Path(tmp) / "mask")
        size = (Path(tmp) / "mask" / "dean_mask.safetensors").stat().st_size
        editor.unload()
        with Timer() as t_apply:
            editor = DeanEditor.from_pretrained(model, Path(tmp) / "mask")
    prompt = format_prompt(tokenizer, "Tell me about the history of the printing press.")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              pad_token_id=tokenizer.pad_token_id)
    editor.generate(**inputs, **kw)  # warm-up
    rates = {"with": [], "without": []}
    for _ in range(3):  # interleaved, so drift on a shared machine hits both alike
        for setting in ("without", "with"):
            if setting == "without":
                with editor.disable_mask(), Timer() as t:
                    editor.generate(**inputs, **kw)
            else:
                with Timer() as t:
                    editor.generate(**inputs, **kw)
            rates[setting].append(args.new_tokens / t.seconds)
    best = {k: max(v) for k, v in rates.items()}
    print(f"select from 3 cached score sets (load + select): {fmt(t_select.seconds)} s, {mask.num_masked} weights")
    print(f"load + check + apply the mask: {t_apply.seconds:.3f} s")
    print(f"mask file: {size / 1024:.1f} KiB")
    print(f"generation: {fmt(best['with'])} tokens/s with the mask, {fmt(best['without'])} without; "
          f"ratio {best['with'] / best['without']:.3f}")


if __name__ == "__main__":
    main()
