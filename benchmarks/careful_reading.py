"""Careful reading of `dean tune`'s settings on SmolLM2-135M-Instruct: answers for a blind reader, then the figures.

Two stages, run apart (a person, or a blind helper, reads in between):

    cd benchmarks && ../.venv/bin/python careful_reading.py answers --out dean_runs/careful   # ~20 min on 2 cores
    # read the sheet blind (dean label dean_runs/careful), then:
    cd benchmarks && ../.venv/bin/python careful_reading.py figures --out dean_runs/careful \
        --labels judge_labels/tune_careful_reading.jsonl --table RESULTS.md

`answers` draws, from the test part of `dean tune`'s split (the same seed and development size as
tune_reference.py, so the search never saw these questions), a seeded sample of fairness and privacy questions, and
writes the greedy answers (chat template, 64 new tokens) of three settings to `answers.jsonl` (dean_hf's schema):
the base model, the tune confirmation's setting and the neuron-granularity trial that tied it on the development
questions. Scores are computed as tune computed them (snip, 128 samples per set, seed 0, keep = 1).

`figures` joins a careful reader's labels (one per distinct answer) with the settings and writes, per setting and
dimension, the careful-reading rate, the paired change against the base model (exact McNemar, paired bootstrap,
Holm over dimensions, detectable change), the rule judge's agreement with the reader on these answers, and the
readers' own agreement on the doubly read overlap; `--table` writes the "careful" section of RESULTS.md and
RESULTS_careful.json (what the README quotes).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from _common import REFERENCE, write_section

SOURCES = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
           "general": "alpaca_cleaned_no_safety_train_1k.csv"}
SETTINGS = {  # name -> tune Setting fields
    "tune-chosen": dict(modules="all-linear", q=1e-4, p=1e-4, variant="scale", scale=0.5),
    "tune-neuron": dict(modules="mlp", q=1e-3, p=1e-3, variant="neuron"),
}
DIMENSIONS = ("fairness", "privacy")


def draw_questions(n: dict[str, int], seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """(question_id, question) pairs drawn from the test part of tune's split (dev 150 per dimension, seed 0)."""
    from dean_hf.data import load_records
    from dean_hf.experiments.tune import split_questions

    questions = {d: load_records(REFERENCE / f"salad_{d}.csv", prompt_column="questions", response_column=None,
                                 seed=0)["prompt"] for d in DIMENSIONS}
    _, test = split_questions(questions, dev_size=150, seed=0)
    out = {}
    for d in DIMENSIONS:
        index = {q: i for i, q in enumerate(questions[d])}
        drawn = random.Random(f"careful:{seed}:{d}").sample(test[d], n[d])
        out[d] = [(f"{d}-{index[q]:04d}", q) for q in drawn]
    return out


def answers(args: argparse.Namespace) -> None:
    import torch

    from dean_hf.config import DeanConfig
    from dean_hf.data import load_records
    from dean_hf.editor import DeanEditor
    from dean_hf.eval.generate import generate_answers, generation_batch_size
    from dean_hf.eval.judges import RuleJudge
    from dean_hf.experiments.tune import Setting, _mask_for
    from dean_hf.io import atomic_write_text
    from dean_hf.models import load_model, load_tokenizer
    from dean_hf.pipeline import score_datasets_cached

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = draw_questions({"fairness": args.fairness, "privacy": args.privacy})
    model, tokenizer = load_model("default", dtype="float32"), load_tokenizer("default")
    records = {k: load_records(REFERENCE / v, n=128, seed=0) for k, v in SOURCES.items()}
    config = DeanConfig(scorer="snip", num_samples=128, seed=0, max_length=256, keep=1.0)
    scores = score_datasets_cached(model, tokenizer, records, config, out / "scores")
    batch = generation_batch_size(model, 64)
    judge = RuleJudge()
    rows, masked = [], {}
    for name in ["base", *SETTINGS]:
        editor = None
        if name != "base":
            mask = _mask_for(Setting(**SETTINGS[name]), scores)
            masked[name] = mask.num_masked
            editor = DeanEditor(model)
            editor.add_adapter("reading", mask, check_base_model=False)
            editor.set_adapter("reading")
        try:
            for d in DIMENSIONS:
                texts = generate_answers(model, tokenizer, [q for _, q in drawn[d]], max_new_tokens=64,
                                         batch_size=batch, description=f"{name}: {d}")
                for (qid, q), a in zip(drawn[d], texts):
                    rows.append({"setting": name, "dimension": d, "question_id": qid, "question": q, "answer": a,
                                 "judge": judge.judge(d, q, a)})
        finally:
            if editor is not None:
                editor.unload()
    atomic_write_text(out / "answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / "settings.json", json.dumps(
        {"settings": {k: Setting(**v).label() for k, v in SETTINGS.items()}, "masked": masked,
         "questions": {d: len(drawn[d]) for d in DIMENSIONS}, "max_new_tokens": 64, "scoring": config.to_dict()
         if hasattr(config, "to_dict") else str(config)}, indent=2, default=str))
    print(f"{len(rows)} answers -> {out / 'answers.jsonl'}")


def _key(row: dict) -> tuple[str, str]:
    return row["question_id"], row["answer"].strip()


def figures(args: argparse.Namespace) -> None:
    from dean_hf.eval.stats import (JudgeAgreement, as_outcomes, compare_paired, corrected_rate, holm,
                                    wilson_interval)
    from dean_hf.eval.awareness import cohen_kappa

    out = Path(args.out)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text(encoding="utf-8").splitlines() if line]
    labelled = [json.loads(line) for line in Path(args.labels).read_text(encoding="utf-8").splitlines() if line]
    label = {(r["question_id"], r["answer"].strip()): r["label"] for r in labelled if r.get("reader") == "first"}
    second = {(r["question_id"], r["answer"].strip()): r["label"] for r in labelled if r.get("reader") == "second"}
    missing = [k for k in map(_key, rows) if k not in label]
    if missing:
        raise SystemExit(f"{len(missing)} answers have no label (e.g. {missing[0]}): read them first")
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    by = {(r["setting"], r["dimension"], r["question_id"]): r for r in rows}
    made = json.loads((out / "settings.json").read_text())
    result: dict = {"settings": made["settings"], "masked": made["masked"], "questions": made["questions"],
                    "date": time.strftime("%Y-%m-%d"), "labels": str(args.labels), "readers": {}, "rates": {},
                    "paired": {}, "judge": {}}
    for d in DIMENSIONS:  # the readers' own agreement on the overlap (unclear kept as a category)
        both = [(label[k], second[k]) for k in second if k in label and k[0].startswith(d)]
        result["readers"][d] = {"n": len(both), "agree": sum(a == b for a, b in both) / len(both) if both else None,
                                "kappa": cohen_kappa([a for a, _ in both], [b for _, b in both]) if both else None}
    for s in settings:
        result["rates"][s] = {}
        for d in DIMENSIONS:
            labels = [label[_key(r)] for r in rows if r["setting"] == s and r["dimension"] == d]
            aware, unaware = labels.count("aware"), labels.count("unaware")
            judge_rows = [r for r in rows if r["setting"] == s and r["dimension"] == d]
            agreement = JudgeAgreement.from_labels(d, [label[_key(r)] for r in judge_rows],
                                                   [r["judge"] for r in judge_rows], source=f"careful reading, {s}")
            judged = [r["judge"] for r in judge_rows]
            result["rates"][s][d] = {"n": aware + unaware, "aware": aware, "unaware": unaware,
                                     "unclear": labels.count("unclear"), "rate": aware / max(1, aware + unaware),
                                     "ci95": list(wilson_interval(aware, aware + unaware)),
                                     "judge_rate": judged.count("aware") / max(1, judged.count("aware")
                                                                                + judged.count("unaware")),
                                     "judge_corrected": corrected_rate(as_outcomes(judged), agreement).to_dict()}
            result["judge"].setdefault(s, {})[d] = agreement.to_dict()
        if s == settings[0]:
            continue
        comps = {}
        for d in DIMENSIONS:
            qids = [r["question_id"] for r in rows if r["setting"] == settings[0] and r["dimension"] == d]
            before = as_outcomes([label[_key(by[(settings[0], d, q)])] for q in qids])
            after = as_outcomes([label[_key(by[(s, d, q)])] for q in qids])
            comps[d] = compare_paired(before, after)
        for c, adj in zip(comps.values(), holm([c.p_value for c in comps.values()])):
            c.p_adjusted = adj
        result["paired"][s] = {d: {**c.to_dict(), "verdict": c.verdict()} for d, c in comps.items()}
        judged = {}  # the rule judge's paired change on the same questions, for comparison
        for d in DIMENSIONS:
            qids = [r["question_id"] for r in rows if r["setting"] == settings[0] and r["dimension"] == d]
            judged[d] = compare_paired(as_outcomes([by[(settings[0], d, q)]["judge"] for q in qids]),
                                       as_outcomes([by[(s, d, q)]["judge"] for q in qids]))
        for c, adj in zip(judged.values(), holm([c.p_value for c in judged.values()])):
            c.p_adjusted = adj
        result.setdefault("judge_paired", {})[s] = {d: {**c.to_dict(), "verdict": c.verdict()}
                                                    for d, c in judged.items()}
    (out / "careful.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = render(result)
    print(text)
    if args.table:
        write_section(args.table, "careful", text)
        Path(args.table).with_name("RESULTS_careful.json").write_text(json.dumps(result, indent=2, default=str)
                                                                        + "\n")


def render(result: dict) -> str:
    """The careful-reading section of RESULTS.md."""
    lines = ["## Careful reading of dean tune's settings (blind, SmolLM2-135M-Instruct, test questions)", "",
             "| setting | dimension | careful rate [95% CI] (n) | paired change [95% CI] | flips +/- | McNemar p "
             "(Holm) | detectable | judge's rate | judge vs reader: accuracy / kappa |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, dims in result["rates"].items():
        for d, r in dims.items():
            p = result["paired"].get(s, {}).get(d)
            j = result["judge"][s][d]
            change = (f"{p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | +{p['improved']}/"
                      f"-{p['worsened']} | {p['p_adjusted']:.3g} | {p['detectable']:.3f}") if p else "| | |"
            name = result["settings"].get(s, s)
            lines.append(f"| {name} | {d} | {r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] ({r['n']}) | "
                         f"{change} | {r['judge_rate']:.3f} | {j['accuracy']:.2f} / {j['kappa']:.2f} |")
    readers = "; ".join(f"{d}: kappa {v['kappa']:.2f}, agreement {v['agree']:.2f} on {v['n']} answers"
                        for d, v in result["readers"].items() if v["n"])
    lines += ["", f"Readers' own agreement on the doubly read overlap: {readers}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    a = sub.add_parser("answers")
    a.add_argument("--out", default="dean_runs/careful")
    a.add_argument("--fairness", type=int, default=125)
    a.add_argument("--privacy", type=int, default=85)
    f = sub.add_parser("figures")
    f.add_argument("--out", default="dean_runs/careful")
    f.add_argument("--labels", required=True)
    f.add_argument("--table", default=None)
    args = parser.parse_args()
    start = time.time()
    answers(args) if args.stage == "answers" else figures(args)
    print(f"{(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
