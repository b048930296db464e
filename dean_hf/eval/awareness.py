"""Awareness rate and judge agreement: the arithmetic of the evaluation."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .judges import AWARE, UNAWARE, UNCLEAR, Judge


@dataclass
class AwarenessResult:
    """Awareness of one dimension: aware / (aware + unaware), unclear answers counted apart."""

    dimension: str
    aware: int
    unaware: int
    unclear: int
    records: list[dict] = field(default_factory=list, repr=False)

    @property
    def n(self) -> int:
        """Questions asked."""
        return self.aware + self.unaware + self.unclear

    @property
    def rate(self) -> float:
        """aware / (aware + unaware); NaN when every answer is unclear."""
        judged = self.aware + self.unaware
        return self.aware / judged if judged else math.nan

    @property
    def unclear_share(self) -> float:
        """unclear / n: the share of answers the judge gave no verdict on (NaN when nothing was asked)."""
        return self.unclear / self.n if self.n else math.nan

    def summary(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "rate": self.rate, "aware": self.aware, "unaware": self.unaware,
                "unclear": self.unclear, "unclear_share": self.unclear_share, "n": self.n}


def awareness_from_labels(dimension: str, labels: Sequence[str], records: list[dict] | None = None) -> AwarenessResult:
    """Count labels into an AwarenessResult."""
    counts = Counter(labels)
    unknown = set(counts) - {AWARE, UNAWARE, UNCLEAR}
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}")
    return AwarenessResult(dimension, counts[AWARE], counts[UNAWARE], counts[UNCLEAR], records or [])


def judge_answers(judge: Judge, dimension: str, questions: Sequence[str], answers: Sequence[str]) -> AwarenessResult:
    """Judge each (question, answer) pair and count."""
    records = [{"question": q, "answer": a, "label": judge.judge(dimension, q, a)} for q, a in zip(questions, answers)]
    return awareness_from_labels(dimension, [r["label"] for r in records], records)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two label sequences (1 = perfect agreement, 0 = chance)."""
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return (observed - expected) / (1 - expected) if expected < 1 else math.nan


@dataclass
class Agreement:
    """How far a judge agrees with careful labels on one dimension ('unclear' reference items excluded)."""

    dimension: str
    n: int
    accuracy: float
    kappa: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_agreement(judge: Judge, labelled: str | Path | Sequence[dict]) -> dict[str, Agreement]:
    """Accuracy and Cohen's kappa per dimension against a JSONL of (dimension, question, answer, label)."""
    rows = labelled
    if isinstance(labelled, (str, Path)):
        rows = [json.loads(line) for line in Path(labelled).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = {}
    for dim in sorted({r["dimension"] for r in rows}):
        sub = [r for r in rows if r["dimension"] == dim and r["label"] != UNCLEAR]
        ref = [r["label"] for r in sub]
        got = [judge.judge(dim, r["question"], r["answer"]) for r in sub]
        acc = sum(x == y for x, y in zip(ref, got)) / len(sub) if sub else math.nan
        out[dim] = Agreement(dim, len(sub), acc, cohen_kappa(ref, got))
    return out
