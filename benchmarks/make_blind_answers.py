"""Answers for a blind reading: SmolLM2-135M-Instruct's answers to SALAD-Bench questions from several settings
(the base model and DEAN edits), shuffled, with the setting kept apart, so that a reader labels them without
knowing which setting produced which answer. The labels measure the offline judge on answers none of its rules
saw (see judge_labels/README.md).

    cd benchmarks && ../.venv/bin/python make_blind_answers.py --out /tmp/blind   # answers.jsonl + key.jsonl

Questions already in the calibration set (../shared/data/judge_calibration/) are left out.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from _common import REFERENCE

CALIBRATION = REFERENCE.parent / "judge_calibration" / "smollm2_salad_labels.jsonl"
SETTINGS = {"base": None, "mlp-q1e-3": 1e-3, "mlp-q1e-2": 1e-2}


def main() -> None:
    import csv

    from dean_hf.config import DeanConfig
    from dean_hf.data import load_records
    from dean_hf.editor import DeanEditor
    from dean_hf.eval import generate_answers
    from dean_hf.models import load_model, load_tokenizer
    from dean_hf.pipeline import mask_and_config, score_datasets_cached

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for answers.jsonl (to label) and key.jsonl (settings)")
    parser.add_argument("--questions", type=int, default=50, help="questions per dimension")
    parser.add_argument("--n", type=int, default=32, help="scoring samples per data set")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen = {json.loads(line)["question"] for line in CALIBRATION.read_text().splitlines() if line.strip()}
    rng = random.Random(args.seed)
    questions = {}
    for dim in ("fairness", "privacy"):
        with open(REFERENCE / f"salad_{dim}.csv", encoding="utf-8") as f:
            pool = [row["questions"] for row in csv.DictReader(f) if row["questions"] not in seen]
        questions[dim] = rng.sample(pool, args.questions)
    model, tokenizer = load_model("default", dtype="float32"), load_tokenizer("default")
    files = {"fairness": "beaver_train330k_fairness_safe_1k.csv", "privacy": "beaver_train330k_privacy_safe_1k.csv",
             "general": "alpaca_cleaned_no_safety_train_1k.csv"}
    config = DeanConfig(num_samples=args.n, max_length=256, target_modules="mlp", keep=1e-2)
    records = {k: load_records(REFERENCE / v, n=args.n, seed=0) for k, v in files.items()}
    scores = score_datasets_cached(model, tokenizer, records, config, out / "scores")
    general = scores.pop("general")
    rows = []
    for setting, q in SETTINGS.items():
        editor = None
        if q is not None:
            mask, mask_config = mask_and_config(scores, general, DeanConfig(q=q, p=q, target_modules="mlp"))
            editor = DeanEditor(model)
            editor.add_adapter("default", mask, mask_config)
            editor.set_adapter("default")
        for dim, qs in questions.items():
            answers = generate_answers(model, tokenizer, qs, max_new_tokens=64, batch_size=16,
                                       description=f"{setting} {dim}")
            rows += [{"dimension": dim, "question": qq, "answer": a, "setting": setting} for qq, a in zip(qs, answers)]
        if editor is not None:
            editor.unload()
    rng.shuffle(rows)
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f, open(out / "key.jsonl", "w", encoding="utf-8") as k:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": i, "dimension": row["dimension"], "question": row["question"],
                                "answer": row["answer"]}) + "\n")
            k.write(json.dumps({"id": i, "setting": row["setting"]}) + "\n")
    print(f"{len(rows)} answers -> {out / 'answers.jsonl'} (settings in {out / 'key.jsonl'}, keep it from the reader)")


if __name__ == "__main__":
    main()
