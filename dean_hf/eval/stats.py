"""The statistics behind every before/after figure: paired comparisons on the same questions, the judge's own
error, and the smallest difference a run can detect. Pure functions of labels and counts.

Labels per question are 1 (aware), 0 (unaware) or None (unclear: not judged). Two settings evaluated on the same
questions are compared pairwise: which answers flipped, an exact McNemar test on the flips, and a paired bootstrap
interval for the difference in awareness. A judge that errs shifts the raw rate; with its measured sensitivity
and specificity the Rogan-Gladen estimator corrects it, and the interval then includes the uncertainty of that
calibration too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

Label = Optional[int]


def as_outcomes(labels: Sequence[str]) -> list[Label]:
    """Judge labels ('aware', 'unaware', 'unclear') as 1, 0 and None."""
    table = {"aware": 1, "unaware": 0, "unclear": None}
    try:
        return [table[label] for label in labels]
    except KeyError as err:
        raise ValueError(f"unknown label {err.args[0]!r}: expected aware, unaware or unclear") from None


def mcnemar_exact(improved: int, worsened: int) -> float:
    """Two-sided exact McNemar test: the p-value that `improved` of the `improved + worsened` discordant pairs
    went one way if flips were equally likely both ways (a binomial test at 1/2). 1.0 with no discordant pair."""
    n = improved + worsened
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(improved, n, 0.5, alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values (each setting compared with one base): controls the
    chance of any false finding. NaN entries stay NaN. (A few lines; scipy has no Holm.)"""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _rate(outcomes: np.ndarray) -> float:
    judged = outcomes[~np.isnan(outcomes)]
    return float(judged.mean()) if judged.size else math.nan


def detectable_difference(n: int, discordant: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest change in awareness a paired comparison of `n` questions detects with `power` at level
    `alpha`, when a fraction `discordant` of the answers flips (either way): (z_a/2 + z_b) * sqrt(discordant / n),
    at most 1 (a run that small detects no change short of all of it). At least one flip is assumed, so a run
    without flips still reports a finite figure."""
    from scipy.stats import norm

    if n <= 0:
        return math.nan
    psi = max(discordant, 1.0 / n)
    return min(1.0, float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(psi / n)))


@dataclass
class PairedComparison:
    """Two settings on the same questions (before -> after)."""

    n: int  # questions judged in both settings
    improved: int  # unaware -> aware
    worsened: int  # aware -> unaware
    unclear: int  # questions unclear in either setting (left out of the flips)
    before: float
    after: float
    difference: float  # after - before, over the questions judged in both
    ci95: tuple[float, float]  # paired bootstrap (percentile)
    p_value: float  # exact McNemar
    detectable: float  # smallest difference this n and flip rate detect (80% power, 5% level)
    p_adjusted: Optional[float] = None  # Holm, when several settings were compared with one base

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self, alpha: float = 0.05) -> str:
        """'higher', 'lower' or 'not distinguishable' at `alpha` (on the adjusted p-value when there is one)."""
        p = self.p_value if self.p_adjusted is None else self.p_adjusted
        if p >= alpha:
            return "not distinguishable"
        return "higher" if self.difference > 0 else "lower"


def compare_paired(before: Sequence[Label], after: Sequence[Label], *, n_boot: int = 2000,
                   seed: int = 0) -> PairedComparison:
    """Compare two settings' outcomes on the same questions (same order)."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes need the same questions: {len(before)} before, {len(after)} after")
    both = [(b, a) for b, a in zip(before, after) if b is not None and a is not None]
    improved = sum(1 for b, a in both if b == 0 and a == 1)
    worsened = sum(1 for b, a in both if b == 1 and a == 0)
    pairs = np.array(both, dtype=float).reshape(-1, 2)
    n = len(both)
    diff = float(pairs[:, 1].mean() - pairs[:, 0].mean()) if n else math.nan
    if n:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n, size=(n_boot, n))
        deltas = pairs[draws, 1].mean(axis=1) - pairs[draws, 0].mean(axis=1)
        ci = (float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5)))
    else:
        ci = (math.nan, math.nan)
    return PairedComparison(
        n=n, improved=improved, worsened=worsened, unclear=len(before) - n,
        before=float(pairs[:, 0].mean()) if n else math.nan, after=float(pairs[:, 1].mean()) if n else math.nan,
        difference=diff, ci95=ci, p_value=mcnemar_exact(improved, worsened),
        detectable=detectable_difference(n, (improved + worsened) / n if n else 0.0))


@dataclass
class JudgeAgreement:
    """How a judge agrees with careful labels on one dimension ('unclear' reference items left out).

    Positive = aware: sensitivity is P(judge aware | truly aware), specificity P(judge unaware | truly unaware)."""

    dimension: str
    n: int
    true_aware: int  # judge aware, reader aware
    false_unaware: int  # judge unaware (or unclear), reader aware
    false_aware: int  # judge aware, reader unaware
    true_unaware: int  # judge unaware (or unclear), reader unaware
    source: str = ""

    @property
    def accuracy(self) -> float:
        return (self.true_aware + self.true_unaware) / self.n if self.n else math.nan

    @property
    def sensitivity(self) -> float:
        pos = self.true_aware + self.false_unaware
        return self.true_aware / pos if pos else math.nan

    @property
    def specificity(self) -> float:
        neg = self.false_aware + self.true_unaware
        return self.true_unaware / neg if neg else math.nan

    @property
    def kappa(self) -> float:
        n = self.n
        if not n:
            return math.nan
        observed = self.accuracy
        judge_aware = (self.true_aware + self.false_aware) / n
        reader_aware = (self.true_aware + self.false_unaware) / n
        expected = judge_aware * reader_aware + (1 - judge_aware) * (1 - reader_aware)
        return (observed - expected) / (1 - expected) if expected < 1 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy, "kappa": self.kappa, "sensitivity": self.sensitivity,
                "specificity": self.specificity}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JudgeAgreement":
        return cls(**{k: data[k] for k in ("dimension", "n", "true_aware", "false_unaware", "false_aware",
                                            "true_unaware")}, source=data.get("source", ""))

    @classmethod
    def from_labels(cls, dimension: str, reader: Sequence[str], judge: Sequence[str],
                    source: str = "") -> "JudgeAgreement":
        """Count agreement of `judge` labels with a careful `reader`'s (items the reader marked unclear are left
        out; a judge's 'unclear' counts as not aware)."""
        counts = {"true_aware": 0, "false_unaware": 0, "false_aware": 0, "true_unaware": 0}
        n = 0
        for r, j in zip(reader, judge):
            if r == "unclear":
                continue
            n += 1
            if r == "aware":
                counts["true_aware" if j == "aware" else "false_unaware"] += 1
            else:
                counts["false_aware" if j == "aware" else "true_unaware"] += 1
        return cls(dimension=dimension, n=n, source=source, **counts)


def rogan_gladen(rate: float, sensitivity: float, specificity: float) -> float:
    """The true awareness rate behind an observed one, for a judge of this sensitivity and specificity:
    (rate + specificity - 1) / (sensitivity + specificity - 1), clipped to [0, 1]. NaN for a judge no better than
    chance (sensitivity + specificity <= 1)."""
    youden = sensitivity + specificity - 1
    if not youden > 0 or math.isnan(rate):
        return math.nan
    return min(1.0, max(0.0, (rate + specificity - 1) / youden))


@dataclass
class CorrectedRate:
    """An awareness rate corrected for the judge's error, with a 95% interval that includes the uncertainty of
    the questions drawn and of the judge's calibration."""

    raw: float
    corrected: float
    ci95: tuple[float, float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corrected_rate(outcomes: Sequence[Label], agreement: JudgeAgreement, *, n_boot: int = 2000,
                   seed: int = 0) -> CorrectedRate:
    """Rogan-Gladen corrected awareness of `outcomes`, with a 95% interval from draws of the observed rate and of
    the judge's sensitivity and specificity (each from the counts it was measured on)."""
    judged = np.array([o for o in outcomes if o is not None], dtype=float)
    n = judged.size
    raw = float(judged.mean()) if n else math.nan
    point = rogan_gladen(raw, agreement.sensitivity, agreement.specificity)
    if not n or math.isnan(point):
        return CorrectedRate(raw=raw, corrected=point, ci95=(math.nan, math.nan), n=n)
    rng = np.random.default_rng(seed)
    # Jeffreys draws (Beta(k + 1/2, n - k + 1/2)) for the rate and for the judge's sensitivity and specificity:
    # they keep some uncertainty at 0% and 100%, where resampling the counts would have none.
    aware = int(judged.sum())
    rates = rng.beta(aware + 0.5, n - aware + 0.5, size=n_boot)
    se = rng.beta(agreement.true_aware + 0.5, agreement.false_unaware + 0.5, size=n_boot)
    sp = rng.beta(agreement.true_unaware + 0.5, agreement.false_aware + 0.5, size=n_boot)
    youden = se + sp - 1
    if np.mean(youden <= 0) > 0.025:  # the judge may be no better than chance: the data cannot bound the truth
        return CorrectedRate(raw=raw, corrected=point, ci95=(0.0, 1.0), n=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (rates + sp - 1) / youden  # unclipped: clipping the draws would fake certainty at 0 and 1
    values = values[youden > 0]
    ci = (float(np.clip(np.percentile(values, 2.5), 0.0, 1.0)), float(np.clip(np.percentile(values, 97.5), 0.0, 1.0)))
    return CorrectedRate(raw=raw, corrected=point, ci95=ci, n=n)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaN when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration_part(question: str) -> str:
    """'refine' or 'measure': a fixed split of labelled answers by question (every answer to one question falls
    in the same part), so that a judge's rules are refined on one part and measured on the other."""
    import hashlib

    return "refine" if hashlib.sha256(question.encode("utf-8")).digest()[0] % 2 == 0 else "measure"
