"""The reference run: DEAN on SmolLM2-135M-Instruct with the paper's data (../shared/data/dean_reference/).

Before/after, a q x modules sweep, the LoRA SFT baseline (and DEAN after it), robustness to few samples and to
unsafe-only data; all judged by the offline rule judge on SALAD-Bench questions. Writes report.json,
report.md and PNG plots into --out, and with --table the committed results table.

    cd benchmarks && ../.venv/bin/python reproduce_reference.py --table RESULTS.md   # full (40 min on 2 CPU cores)
    cd benchmarks && ../.venv/bin/python reproduce_reference.py --quick              # minutes, tiny settings
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from _common import REFERENCE

from dean_hf.config import DeanConfig
from dean_hf.data import load_records
from dean_hf.editor import DeanEditor
from dean_hf.eval import judge_note
from dean_hf.eval.report import plot_awareness, plot_mask_per_layer, write_report
from dean_hf.experiments import dean_setting, finetune_variants, measure, rate_text, robustness, sweep
from dean_hf.models import load_model, load_tokenizer
from dean_hf.pipeline import score_datasets_cached
from dean_hf.selection import select_coupled_neurons

SAFE = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
        "general": "alpaca_cleaned_no_safety_train_1k.csv"}
UNSAFE = {"fairness": "beaver_train330k_fairness_unsafe_1k.csv", "privacy": "beaver_train330k_privacy_unsafe_1k.csv",
          "general": "alpaca_cleaned_no_safety_train_1k.csv"}


def row_cells(label: str, r: dict) -> list:
    if "fairness" not in r:
        return [label, r.get("masked", 0), "nothing selected: model unchanged", "", ""]
    return [label, r.get("masked", 0), rate_text(r["fairness"]), rate_text(r["privacy"]), f"{r['perplexity']:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="dean_runs/reference")
    parser.add_argument("--table", default=None, help="also write the results table (Markdown) here")
    parser.add_argument("--questions", type=int, default=80, help="SALAD questions per dimension")
    parser.add_argument("--n", type=int, default=128, help="scoring samples per data set (paper: 128)")
    args = parser.parse_args()
    if not REFERENCE.is_dir():
        raise SystemExit(f"reference data not found at {REFERENCE}")
    start = time.time()
    nq, n = (6, 8) if args.quick else (args.questions, args.n)
    qs = [1e-3] if args.quick else [1e-4, 1e-3, 1e-2]
    module_sets = ["mlp"] if args.quick else ["mlp", "self_attn", "all-linear"]
    ns = (4, n) if args.quick else (8, 32, n)
    tokens = 16 if args.quick else 64
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model("default", dtype="float32"), load_tokenizer("default")
    questions = {d: load_records(REFERENCE / f"salad_{d}.csv", prompt_column="questions", response_column=None,
                                 n=nq, seed=0)["prompt"] for d in ("fairness", "privacy")}
    safe = {k: REFERENCE / v for k, v in SAFE.items()}
    kw = dict(max_new_tokens=tokens, batch_size=16, show_progress=not args.quick)

    base = measure(model, tokenizer, questions, **kw)
    config = DeanConfig(num_samples=n, max_length=256)
    records = {k: load_records(v, n=n, seed=0) for k, v in safe.items()}
    # Stored where the robustness study looks for its n-sample safe scores, so they are computed once.
    scores = score_datasets_cached(model, tokenizer, records, config, out / "scores" / f"safe-{n}",
                                   show_progress=not args.quick)
    general = scores.pop("general")
    paper_mask = select_coupled_neurons(scores, general, q=5e-7, p=5e-7)
    rows = sweep(model, tokenizer, scores, general, questions, qs=qs, module_sets=module_sets, **kw)
    default_mask = select_coupled_neurons({k: v for k, v in scores.items()}, general, q=1e-3, p=1e-3)

    tuned = finetune_variants(model, tokenizer, records["privacy"], records["fairness"], show_progress=not args.quick)
    sft = {name: measure(m, tokenizer, questions, **kw) for name, m in tuned.items()}
    sft["sft_privacy + DEAN"] = dean_setting(tuned["sft_privacy"], tokenizer, safe, questions, out / "scores-sft",
                                             n=n, q=1e-3, p=1e-3, **kw)
    del tuned
    robust = robustness(model, tokenizer, safe, {k: REFERENCE / v for k, v in UNSAFE.items()}, questions,
                        out / "scores", ns=ns, q=1e-3, p=1e-3, **kw)

    header = ["setting", "weights zeroed", "fairness awareness [95% CI]", "privacy awareness [95% CI]",
              "perplexity"]
    main_rows = [row_cells("base model", base), row_cells("DEAN, paper setting (p = q = 5e-7, MLP)",
                                                          {"masked": paper_mask.num_masked})]
    main_rows += [row_cells(f"DEAN {r['modules']}, q = p = {r['q']:g}", r) for r in rows]
    sft_rows = [row_cells(name, r) for name, r in sft.items()]
    robust_rows = [row_cells(f"DEAN mlp q = p = 1e-3, {r['data']}, n = {r['n']}", r) for r in robust]
    plot_rows = [{"setting": "base", "dimension": d, **base[d]} for d in questions]
    best = [r for r in rows if "fairness" in r]
    for r in best[:3]:
        plot_rows += [{"setting": f"{r['modules']} q={r['q']:g}", "dimension": d, **r[d]} for d in questions]
    plots = [plot_awareness(plot_rows, out / "awareness.png", "awareness: base vs DEAN settings"),
             plot_mask_per_layer(default_mask, out / "mask_per_layer.png")]
    minutes = (time.time() - start) / 60
    command = "cd benchmarks && ../.venv/bin/python reproduce_reference.py" + (" --quick" if args.quick else "") + \
        (f" --table {args.table}" if args.table else "")
    notes = [judge_note(__import__("dean_hf.eval", fromlist=["RuleJudge"]).RuleJudge()),
             f"{nq} SALAD-Bench questions per dimension (seed 0), greedy, {tokens} new tokens, chat template; "
             f"scoring on {n} samples per data set (seed 0). Rates are aware / (aware + unaware) with 95% Wilson "
             "intervals; overlapping intervals mean the difference is not established.",
             f"Paper setting p = q = 5e-7 selects {paper_mask.num_masked} weights on this model: floor(5e-7 x numel) "
             "is 0 for every matrix of a 135M model.",
             f"Ran in {minutes:.1f} min on {platform.machine()} ({platform.processor() or 'CPU'}), "
             f"{time.strftime('%Y-%m-%d')}. Command: `{command}`"]
    tables = [("Before vs after DEAN (sweep over q and modules)", header, main_rows),
              ("SFT baseline (LoRA with peft) and DEAN after it", header, sft_rows),
              ("Robustness: few samples and unsafe-only data", header, robust_rows)]
    data = {"base": base, "paper_setting_masked": paper_mask.num_masked, "sweep": rows, "sft": sft,
            "robustness": robust, "minutes": minutes, "command": command}
    files = write_report(out, "report", data, title="DEAN on SmolLM2-135M-Instruct: reference run", tables=tables,
                         notes=notes, plots=plots)
    if args.table:  # its own section of the table file (bench_scale.py writes another)
        import tempfile

        from _common import write_section

        with tempfile.TemporaryDirectory() as tmp:
            md = write_report(tmp, "table", data, title="DEAN on SmolLM2-135M-Instruct: reference run",
                              tables=tables, notes=notes)["markdown"]
            write_section(args.table, "reference", Path(md).read_text(encoding="utf-8"))
    print(f"report -> {files['markdown']} ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
