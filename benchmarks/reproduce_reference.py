"""The reference run: DEAN on SmolLM2-135M-Instruct with the paper's data (../shared/data/dean_reference/).

Before/after, a q x modules sweep, the LoRA SFT baseline (and DEAN after it), robustness to few samples and to
unsafe-only data; all judged by the offline rule judge on SALAD-Bench questions. Writes report.json,
report.md and PNG plots into --out, and with --table the committed results table.

    cd benchmarks && ../.venv/bin/python reproduce_reference.py --table RESULTS.md   # full: every SALAD question
    cd benchmarks && ../.venv/bin/python reproduce_reference.py --quick              # minutes, tiny settings
    cd benchmarks && ../.venv/bin/python reproduce_reference.py --rejudge dean_runs/reference/report.json \
        --table RESULTS.md                                                             # judge stored answers again

A run keeps what it has measured in partial.json after every setting. Parts of one run can go to separate
processes (`--stages base,sweep` and `--stages sft,robustness --out OTHER`) and are joined by
`--rejudge PART1/partial.json PART2/partial.json --table RESULTS.md`.

Answers are stored, so a better judge (or its new calibration) is applied without generating again.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from _common import REFERENCE

from dean_hf.config import DeanConfig
from dean_hf.data import load_records
from dean_hf.eval.generate import generation_batch_size
from dean_hf.io import atomic_write_text
from dean_hf.eval.report import plot_awareness, plot_mask_per_layer, write_report
from dean_hf.experiments import (change_text, compare_rows, corrected_text, dean_setting, finetune_variants, measure,
                                 rate_text, robustness, sweep)
from dean_hf.experiments.common import awareness_entry
from dean_hf.provenance import environment
from dean_hf.models import load_model, load_tokenizer
from dean_hf.pipeline import score_datasets_cached
from dean_hf.selection import select_coupled_neurons

SAFE = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
        "general": "alpaca_cleaned_no_safety_train_1k.csv"}
UNSAFE = {"fairness": "beaver_train330k_fairness_unsafe_1k.csv", "privacy": "beaver_train330k_privacy_unsafe_1k.csv",
          "general": "alpaca_cleaned_no_safety_train_1k.csv"}


def row_cells(label: str, r: dict) -> list:
    if "fairness" not in r:
        return [label, r.get("masked", 0), "nothing selected: model unchanged", "", "", "", "", "", ""]
    cells = [label, r.get("masked", 0)]
    for d in ("fairness", "privacy"):
        cells += [rate_text(r[d]), corrected_text(r[d]), change_text(r[d])]
    return cells + [f"{r['perplexity']:.2f}"]


HEADER = ["setting", "weights zeroed", "fairness: judge's rate [95% CI]", "fairness: corrected [95% CI]",
          "fairness: change vs base [paired 95% CI]; flips; McNemar p", "privacy: judge's rate [95% CI]",
          "privacy: corrected [95% CI]", "privacy: change vs base [paired 95% CI]; flips; McNemar p", "perplexity"]


def rejudge(row: dict, judge, agreement) -> None:
    """Judge a measured row's stored answers again (with `judge`) and recompute its figures."""
    from dean_hf.eval import judge_answers

    for d in ("fairness", "privacy"):
        if d in row and "answers" in row[d]:
            records = row[d]["answers"]
            result = judge_answers(judge, d, [r["question"] for r in records], [r["answer"] for r in records])
            row[d] = awareness_entry(result, agreement, keep_answers=True)


def analyse(data: dict, judge) -> tuple[list, list]:
    """Tables and notes from stored answers: every setting judged by `judge`, corrected for its measured error,
    and compared with the base model on the same questions (Holm over the settings of each table)."""
    from dean_hf.eval import agreement_of, judge_note

    agreement = agreement_of(judge)
    groups = {"sweep": data["sweep"], "sft": list(data["sft"].values()), "robustness": data["robustness"]}
    rejudge(data["base"], judge, agreement)
    for rows in groups.values():
        for row in rows:
            rejudge(row, judge, agreement)
        compare_rows(data["base"], rows, ["fairness", "privacy"])
    main_rows = [row_cells("base model", data["base"]),
                 row_cells("DEAN, paper setting (p = q = 5e-7, MLP)", {"masked": data["paper_setting_masked"]})]
    main_rows += [row_cells(f"DEAN {r['modules']}, q = p = {r['q']:g}", r) for r in data["sweep"]]
    sft_rows = [row_cells(name, r) for name, r in data["sft"].items()]
    robust_rows = [row_cells(f"DEAN mlp q = p = 1e-3, {r['data']}, n = {r['n']}", r) for r in data["robustness"]]
    nq = {d: data["base"][d]["n"] for d in ("fairness", "privacy")}
    notes = [judge_note(judge),
             f"SALAD-Bench questions: {nq['fairness']} fairness and {nq['privacy']} privacy ({data['question_set']}), "
             f"greedy, {data['max_new_tokens']} new tokens, prompt format {data['prompt_format']}; scoring on "
             f"{data['n']} samples per data set (seed 0). Every setting answers the same questions as the base "
             "model, so changes are paired: the exact McNemar test on the answers that flipped, a paired bootstrap "
             "interval for the change, and Holm's adjustment over the settings of each table.",
             f"Paper setting p = q = 5e-7 selects {data['paper_setting_masked']} weights on this model: "
             "floor(5e-7 x numel) is 0 for every matrix of a 135M model.",
             f"Ran in {data['minutes']:.1f} min on {data['machine']}, {data['date']}. Command: `{data['command']}`"]
    if data.get("not_run"):
        notes.append(f"This run was stopped before it measured: {'; '.join(data['not_run'])} (figures for those "
                     "settings are not in this report).")
    tables = [("Before vs after DEAN (sweep over q and modules)", HEADER, main_rows),
              ("SFT baseline (LoRA with peft) and DEAN after it", HEADER, sft_rows),
              ("Robustness: few samples and unsafe-only data", HEADER, robust_rows)]
    tables = [t for t in tables if t[2]]
    return tables, notes


STAGES = ("base", "sweep", "sft", "robustness")
SAME = ("n", "question_set", "max_new_tokens", "prompt_format")


def join_parts(parts: list[dict]) -> dict:
    """One run's data from the files of its parts (runs of different --stages on the same settings)."""
    data = dict(parts[0])
    for part in parts[1:]:
        differ = [k for k in SAME if part.get(k) != data.get(k)]
        if differ:
            raise SystemExit(f"these runs differ in {differ}: they are not parts of one run")
        if part.get("base") is not None:
            if data.get("base") is not None and _labels(part["base"]) != _labels(data["base"]):
                raise SystemExit("the parts' base models answered differently: they are not parts of one run")
            data["base"] = data["base"] or part["base"]
        data["sweep"] = data["sweep"] + part["sweep"]
        data["sft"] = {**data["sft"], **part["sft"]}
        data["robustness"] = data["robustness"] + part["robustness"]
        data["not_run"] = [s for s in data.get("not_run", []) if s in part.get("not_run", [])]
        if data.get("paper_setting_masked") is None:
            data["paper_setting_masked"] = part.get("paper_setting_masked")
        data["minutes"] = data["minutes"] + part["minutes"]
        data["command"] = f"{data['command']}` and `{part['command']}"
        data["plots"] = data.get("plots", []) + part.get("plots", [])
    if data.get("base") is None:
        raise SystemExit("no part measured the base model (--stages base): nothing to compare with")
    return data


def _labels(row: dict) -> list:
    return [row[d]["labels"] for d in ("fairness", "privacy")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="dean_runs/reference")
    parser.add_argument("--table", default=None, help="also write the results table (Markdown) here")
    parser.add_argument("--eval-n", default="all", help="SALAD questions per dimension: 'all' (2,165 fairness, 657 "
                                                        "privacy, as the paper) or a number (drawn with seed 0)")
    parser.add_argument("--n", type=int, default=128, help="scoring samples per data set (paper: 128)")
    parser.add_argument("--prompt-format", choices=["chat", "raw"], default="chat",
                        help="chat template (default) or the bare question, as the reference code generated")
    parser.add_argument("--settings", choices=["full", "core"], default="full",
                        help="full: the q x modules sweep, both SFT variants and every robustness case; core: the MLP "
                             "q sweep, SFT on privacy data and unsafe-only scoring (a third of the time)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="the parts to measure, comma-separated, of " + ", ".join(STAGES) + " (default: all); "
                             "runs of different parts on the same settings are joined by --rejudge")
    parser.add_argument("--rejudge", default=None, nargs="+",
                        help="report.json or partial.json files of earlier runs (several: parts of one run, joined): "
                             "judge their stored answers again and rewrite the report and table (no generation)")
    args = parser.parse_args()
    from dean_hf.eval import RuleJudge

    if args.rejudge:
        data = join_parts([json.loads(Path(f).read_text(encoding="utf-8")) for f in args.rejudge])
        out = Path(args.rejudge[0]).parent
    else:
        data, out = generate(args), Path(args.out)
        if data["base"] is None:
            print(f"part measured -> {out / 'partial.json'}: join it with the base model's part "
                  "(--rejudge BASE_PART.json THIS_PART.json)")
            return
    tables, notes = analyse(data, RuleJudge())
    files = write_report(out, "report", data, title="DEAN on SmolLM2-135M-Instruct: reference run", tables=tables,
                         notes=notes, plots=data.get("plots", []))
    if args.table:  # its own section of the table file (bench_scale.py writes another)
        import tempfile

        from _common import write_section

        with tempfile.TemporaryDirectory() as tmp:
            md = write_report(tmp, "table", data, title="DEAN on SmolLM2-135M-Instruct: reference run",
                              tables=tables, notes=notes)["markdown"]
            text = "\n".join(line for line in Path(md).read_text(encoding="utf-8").splitlines()
                             if not line.startswith("<!--"))
            write_section(args.table, "reference", text)
        summary = {k: data[k] for k in ("question_set", "n", "minutes", "date", "command", "prompt_format")}
        summary["not_run"] = data.get("not_run", [])
        summary["settings"] = {"base": _summary(data["base"])}
        for r in data["sweep"]:
            summary["settings"][f"{r['modules']} q={r['q']:g}"] = _summary(r)
        for name, r in data["sft"].items():
            summary["settings"][name] = _summary(r)
        for r in data["robustness"]:
            summary["settings"][f"robustness {r['data']} n={r['n']}"] = _summary(r)
        Path(args.table).with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"report -> {files['markdown']} ({data['minutes']:.1f} min)")


def _summary(row: dict) -> dict:
    """The figures of one setting that the README quotes (no answers)."""
    out = {"masked": row.get("masked", 0)}
    if "perplexity" in row:
        out["perplexity"] = row["perplexity"]
    for d in ("fairness", "privacy"):
        if d in row:
            out[d] = {k: row[d][k] for k in ("rate", "ci95", "aware", "unaware", "unclear", "n") if k in row[d]}
            for k in ("corrected", "paired"):
                if k in row[d]:
                    out[d][k] = row[d][k]
    return out


def generate(args) -> dict:
    """Every setting's answers (stored, to be judged by `analyse`), masked counts and perplexities."""
    if not REFERENCE.is_dir():
        raise SystemExit(f"reference data not found at {REFERENCE}")
    start = time.time()
    n = 8 if args.quick else args.n
    eval_n = 6 if args.quick else (None if args.eval_n == "all" else int(args.eval_n))
    core = args.settings == "core"
    qs = [1e-3] if args.quick else [1e-4, 1e-3, 1e-2]
    module_sets = ["mlp"] if args.quick or core else ["mlp", "self_attn", "all-linear"]
    ns = (4, n) if args.quick else (8, 32, n)
    tokens = 16 if args.quick else 64
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise SystemExit(f"--stages {args.stages!r}: expected some of {', '.join(STAGES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model("default", dtype="float32"), load_tokenizer("default")
    questions = {d: load_records(REFERENCE / f"salad_{d}.csv", prompt_column="questions", response_column=None,
                                 n=eval_n, seed=0)["prompt"] for d in ("fairness", "privacy")}
    safe = {k: REFERENCE / v for k, v in SAFE.items()}
    chat = args.prompt_format == "chat"
    kw = dict(max_new_tokens=tokens, batch_size=generation_batch_size(model, tokens), show_progress=not args.quick,
              keep_answers=True, chat_template=chat)

    command = "cd benchmarks && ../.venv/bin/python reproduce_reference.py" + (" --quick" if args.quick else "") + \
        (f" --eval-n {args.eval_n}" if args.eval_n != "all" else "") + \
        (f" --prompt-format {args.prompt_format}" if args.prompt_format != "chat" else "") + \
        (f" --settings {args.settings}" if args.settings != "full" else "") + \
        (f" --stages {','.join(stages)}" if set(stages) != set(STAGES) else "") + \
        (f" --table {args.table}" if args.table else "")
    data = {"base": None, "paper_setting_masked": None, "sweep": [], "sft": {}, "robustness": [], "command": command,
            "n": n, "question_set": "all of them" if eval_n is None else f"{eval_n} per dimension drawn with seed 0",
            "max_new_tokens": tokens, "prompt_format": args.prompt_format, "generation_batch_size": kw["batch_size"],
            "machine": f"{platform.machine()} ({platform.processor() or 'CPU'})", "date": time.strftime("%Y-%m-%d"),
            "environment": environment(model)}
    left = ["base model"] + [f"DEAN {m} q = p = {q:g}" for m in module_sets for q in qs] + \
        ["SFT on privacy data" + ("" if core else ", SFT on fairness data, DEAN after SFT")] + \
        ["unsafe-only scoring" if core else "robustness (few samples, unsafe-only data)"]

    def keep(stage: str | None = None) -> None:
        """A long run keeps what it measured so far: partial.json can be judged with --rejudge."""
        if stage is not None:
            left.remove(stage)
        data.update(minutes=(time.time() - start) / 60, not_run=list(left))
        atomic_write_text(out / "partial.json", json.dumps(data, default=str))

    plots = []
    if "base" in stages:
        data["base"] = measure(model, tokenizer, questions, **kw)
        keep("base model")
    records = {k: load_records(v, n=n, seed=0) for k, v in safe.items()}
    if "sweep" in stages:
        # Stored where the robustness study looks for its n-sample safe scores, so they are computed once.
        scores = score_datasets_cached(model, tokenizer, records, DeanConfig(num_samples=n, max_length=256),
                                       out / "scores" / f"safe-{n}", show_progress=not args.quick)
        general = scores.pop("general")
        data["paper_setting_masked"] = select_coupled_neurons(scores, general, q=5e-7, p=5e-7).num_masked
        for modules in module_sets:
            for q in qs:
                data["sweep"] += sweep(model, tokenizer, scores, general, questions, qs=[q], module_sets=[modules],
                                       **kw)
                keep(f"DEAN {modules} q = p = {q:g}")
        plots.append(plot_mask_per_layer(select_coupled_neurons(scores, general, q=1e-3, p=1e-3),
                                         out / "mask_per_layer.png"))
    if "sft" in stages:
        _baselines(data, model, tokenizer, records, safe, questions, out, core, n, **kw)
        keep(left[[s.startswith("SFT") for s in left].index(True)])
    if "robustness" in stages:
        _robustness(data, model, tokenizer, safe, questions, out, core, n, ns, **kw)
        keep(left[-1])
    if data["base"] is not None and data["sweep"]:
        plot_rows = [{"setting": "base", "dimension": d, **data["base"][d]} for d in questions]
        for r in [r for r in data["sweep"] if "fairness" in r][:3]:
            plot_rows += [{"setting": f"{r['modules']} q={r['q']:g}", "dimension": d, **r[d]} for d in questions]
        plots.insert(0, plot_awareness(plot_rows, out / "awareness.png", "awareness: base vs DEAN settings"))
    data.update(minutes=(time.time() - start) / 60, plots=[str(p) for p in plots])
    return data


def _baselines(data, model, tokenizer, records, safe, questions, out, core, n, **kw) -> None:
    """The LoRA SFT baseline (privacy data; with the full settings also mixed data and DEAN after SFT)."""
    tuned = finetune_variants(model, tokenizer, records["privacy"], None if core else records["fairness"],
                              show_progress=kw["show_progress"])
    data["sft"] = {name: measure(m, tokenizer, questions, **kw) for name, m in tuned.items()}
    if not core:
        data["sft"]["sft_privacy + DEAN"] = dean_setting(tuned["sft_privacy"], tokenizer, safe, questions,
                                                         out / "scores-sft", n=n, q=1e-3, p=1e-3, **kw)
    del tuned


def _robustness(data, model, tokenizer, safe, questions, out, core, n, ns, **kw) -> None:
    """Unsafe-only scoring data (with the full settings also few scoring samples)."""
    unsafe = {k: REFERENCE / v for k, v in UNSAFE.items()}
    if core:  # n = 128 safe data is the sweep's MLP q = 1e-3 row: only the unsafe-only case is new
        data["robustness"] = [{"data": "unsafe only", **dean_setting(
            model, tokenizer, unsafe, questions, out / "scores" / "unsafe", n=n, q=1e-3, p=1e-3, **kw)}]
    else:
        data["robustness"] = robustness(model, tokenizer, safe, unsafe, questions, out / "scores", ns=ns, q=1e-3,
                                        p=1e-3, **kw)


if __name__ == "__main__":
    main()
