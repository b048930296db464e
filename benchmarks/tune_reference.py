"""`dean tune` on SmolLM2-135M-Instruct with the paper's data: search on a development part of all SALAD-Bench
questions, confirm the chosen setting once on the rest. Writes the report into --out and, with --table, the
"tune" section of RESULTS.md and RESULTS_tune.json (what the README quotes).

    cd benchmarks && ../.venv/bin/python tune_reference.py --table RESULTS.md        # hours on 2 CPU cores
    cd benchmarks && ../.venv/bin/python tune_reference.py --quick --out /tmp/tune   # minutes, tiny settings
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REFERENCE, write_section

from dean_hf.data import load_records
from dean_hf.eval.generate import generation_batch_size
from dean_hf.experiments.tune import Objective, TuneSpace, tune
from dean_hf.models import load_model, load_tokenizer

SOURCES = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
           "general": "alpaca_cleaned_no_safety_train_1k.csv",
           "unsafe_fairness": "beaver_train330k_fairness_unsafe_1k.csv",
           "unsafe_privacy": "beaver_train330k_privacy_unsafe_1k.csv"}


def write_table(table: str, out: str, data: dict, minutes: float, command: str, note: str) -> None:
    """The tune section of the results file `table` (from `out`/tune.md) and RESULTS_tune.json beside it."""
    report = (Path(out) / "tune.md").read_text(encoding="utf-8").replace("# dean tune", "## dean tune", 1)
    report = "\n".join(line for line in report.splitlines()
                       if not line.startswith(("![", "<!--"))).replace("\n## ", "\n### ")
    report = report.replace("### dean tune", "## dean tune", 1)
    write_section(table, "tune", report + f"\n{note + ' ' if note else ''}Ran in {minutes:.0f} min, "
                                          f"{time.strftime('%Y-%m-%d')}. Command: `{command}`\n")
    summary = {k: data[k] for k in ("objective", "chosen", "confirmation")}
    summary.update(split={k: v for k, v in data["split"].items() if k != "dev_questions"}, minutes=minutes,
                   command=command, trials=len(data["trials"]), note=note)
    Path(table).with_name("RESULTS_tune.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="dean_runs/tune")
    parser.add_argument("--table", default=None, help="also write the tune section of this results file")
    parser.add_argument("--dev-size", type=int, default=150, help="development questions per dimension")
    parser.add_argument("--device", default="cpu", help="where the model runs (e.g. cuda)")
    parser.add_argument("--qs", default="1e-4,1e-3,1e-2", help="q values of the grid (p = q)")
    parser.add_argument("--modules", default="mlp,self_attn,all-linear", help="module sets of the grid")
    parser.add_argument("--variants", default="zero,scale,neuron,contrastive", help="variants of the grid")
    parser.add_argument("--note", default="", help="a sentence for the results section (where the search ran)")
    parser.add_argument("--resume", default=None, help="trials.jsonl of an interrupted run with the same grid: "
                                                       "confirm its best trial without searching again")
    args = parser.parse_args()
    start = time.time()
    model, tokenizer = load_model("default", dtype="float32").to(args.device), load_tokenizer("default")
    n_questions = 40 if args.quick else None
    questions = {d: load_records(REFERENCE / f"salad_{d}.csv", prompt_column="questions", response_column=None,
                                 n=n_questions, seed=0)["prompt"] for d in ("fairness", "privacy")}
    sources = {k: REFERENCE / v for k, v in SOURCES.items()}
    if args.quick:
        space = TuneSpace(qs=(1e-3,), module_sets=("mlp",), variants=("zero", "scale"), ns=(8,))
    else:
        space = TuneSpace(qs=tuple(float(q) for q in args.qs.split(",")), module_sets=tuple(args.modules.split(",")),
                          variants=tuple(args.variants.split(",")), scales=(0.5,), ns=(128,))
    data = tune(model, tokenizer, sources, questions, args.out, space=space, objective=Objective(),
                dev_size=10 if args.quick else args.dev_size, seed=0, max_new_tokens=16 if args.quick else 64,
                batch_size=generation_batch_size(model, 64), show_progress=not args.quick,
                resume=[json.loads(line) for line in Path(args.resume).read_text().splitlines() if line.strip()]
                if args.resume else None)
    minutes = (time.time() - start) / 60
    grid = [f"--{k} {getattr(args, k)}" for k in ("qs", "modules", "variants")
            if getattr(args, k) != parser.get_default(k)]
    command = "cd benchmarks && ../.venv/bin/python tune_reference.py" + (" --quick" if args.quick else "") + \
        "".join(f" {g}" for g in grid) + (f" --device {args.device}" if args.device != "cpu" else "") + \
        (f" --resume {args.resume}" if args.resume else "") + (f" --table {args.table}" if args.table else "")
    if args.table:
        write_table(args.table, args.out, data, minutes, command, args.note)
    print(f"{len(data['trials'])} trials, chosen {data['chosen']}; report -> {Path(args.out) / 'tune.md'} "
          f"({minutes:.1f} min)")


if __name__ == "__main__":
    main()
