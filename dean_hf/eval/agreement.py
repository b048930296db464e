"""What each judge's figures are worth: its measured agreement with a careful reader, per dimension.

The offline rule judge's agreement is measured by `benchmarks/measure_judge.py` on labelled answers its rules
were not refined on, and shipped as `resources/judge_agreement.json` (a test re-measures it, so it cannot drift
from the rules). Reports use it for the judge-corrected rates and for the note on how far the judge can be
trusted. Other judges carry an `agreement` attribute (a dict dimension -> `JudgeAgreement`) if their user measured
one; otherwise reports show raw rates and say the judge was not measured.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .judges import UNCLEAR, Judge, RuleJudge
from .stats import JudgeAgreement

AGREEMENT_FILE = "resources/judge_agreement.json"


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Any]:
    path = resources.files("dean_hf").joinpath(AGREEMENT_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def shipped_agreement(name: str = "rules") -> Optional[dict[str, Any]]:
    """The shipped measurement of a built-in judge: {"measured_on": ..., "dimensions": {dim: JudgeAgreement}}."""
    entry = _shipped().get(name)
    if not entry:
        return None
    return {**entry, "dimensions": {d: JudgeAgreement.from_dict(v) for d, v in entry["dimensions"].items()}}


def agreement_of(judge: Judge) -> Optional[dict[str, JudgeAgreement]]:
    """Dimension -> measured agreement of `judge` (None when nobody measured it)."""
    own = getattr(judge, "agreement", None)
    if isinstance(own, Mapping):
        return dict(own)
    if isinstance(judge, RuleJudge):
        shipped = shipped_agreement("rules")
        return shipped["dimensions"] if shipped else None
    return None


def measure_agreement(judge: Judge, rows: Sequence[Mapping[str, Any]], source: str = "") -> dict[str, JudgeAgreement]:
    """Agreement of `judge` with labelled rows (dimension, question, answer, label), per dimension."""
    out = {}
    for dim in sorted({r["dimension"] for r in rows}):
        sub = [r for r in rows if r["dimension"] == dim and r["label"] != UNCLEAR]
        got = [judge.judge(dim, r["question"], r["answer"]) for r in sub]
        out[dim] = JudgeAgreement.from_labels(dim, [r["label"] for r in sub], got, source=source)
    return out


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Labelled answers from a JSONL file (dimension, question, answer, label)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_note(judge: Judge) -> str:
    """The sentence every report carries about how far its judge can be trusted, from its measured agreement."""
    agreement = agreement_of(judge)
    if not agreement:
        return (f"Judge: {judge.name}; its agreement with a careful reader was not measured, so its rates are raw "
                "(not corrected for its error).")
    shipped = shipped_agreement("rules") if isinstance(judge, RuleJudge) else None
    where = f" on {shipped['measured_on']}" if shipped else ""
    parts = [f"{d} accuracy {a.accuracy:.2f}, kappa {a.kappa:.2f}, sensitivity {a.sensitivity:.2f}, specificity "
             f"{a.specificity:.2f} (n={a.n})" for d, a in sorted(agreement.items())]
    return (f"Judge: {'dean_hf offline rule judge' if isinstance(judge, RuleJudge) else judge.name}. Agreement with "
            f"a careful reader{where}: " + "; ".join(parts) + ". Corrected rates undo the judge's measured error "
            "(Rogan-Gladen); their intervals include the uncertainty of that measurement.")
