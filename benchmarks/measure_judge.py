"""Measure the offline rule judge against careful readings, on labels its rules were and were not refined on,
and write what reports use (`dean_hf/resources/judge_agreement.json`).

    cd benchmarks && ../.venv/bin/python measure_judge.py --write

Label sets:
- calibration, refine half: ../shared/data/judge_calibration/, the questions `calibration_part` puts in "refine";
  the rules were refined on these (their figures overstate);
- calibration, measure half: the other questions of that file (not used to refine this version of the rules,
  though earlier versions were refined on the whole file);
- blind: judge_labels/smollm2_salad_blind.jsonl, answers read blind to the setting that produced them and never
  used to refine any rule (see judge_labels/README.md). Reports correct rates with this measurement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import REFERENCE

from dean_hf.eval import RuleJudge
from dean_hf.eval.agreement import AGREEMENT_FILE, measure_agreement, read_labels
from dean_hf.eval.stats import calibration_part

HERE = Path(__file__).resolve().parent
CALIBRATION = REFERENCE.parent / "judge_calibration" / "smollm2_salad_labels.jsonl"
BLIND = HERE / "judge_labels" / "smollm2_salad_blind.jsonl"


def measurements() -> dict[str, dict]:
    """Label set -> dimension -> agreement dict, for every label set that is present."""
    judge = RuleJudge()
    sets = {}
    if CALIBRATION.is_file():
        rows = read_labels(CALIBRATION)
        for part in ("refine", "measure"):
            sets[f"calibration ({part} half)"] = [r for r in rows if calibration_part(r["question"]) == part]
    if BLIND.is_file():
        sets["blind"] = read_labels(BLIND)
    return {name: {d: a.to_dict() for d, a in measure_agreement(judge, rows, source=name).items()}
            for name, rows in sets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write dean_hf/{AGREEMENT_FILE}")
    args = parser.parse_args()
    measured = measurements()
    for name, dims in measured.items():
        for dim, a in dims.items():
            print(f"{name:28s} {dim:9s} n={a['n']:4d} accuracy {a['accuracy']:.3f} kappa {a['kappa']:.2f} "
                  f"sensitivity {a['sensitivity']:.2f} specificity {a['specificity']:.2f}")
    used = "blind" if "blind" in measured else "calibration (measure half)"
    if args.write:
        n = sum(a["n"] for a in measured[used].values())
        data = {"rules": {"measured_on": f"{n} SmolLM2-135M answers to SALAD-Bench questions ({used}; "
                                         "benchmarks/measure_judge.py)",
                          "label_set": used, "dimensions": measured[used], "all_label_sets": measured}}
        path = HERE.parent / "dean_hf" / AGREEMENT_FILE
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"-> {path} (reports use the {used!r} measurement)")


if __name__ == "__main__":
    main()
