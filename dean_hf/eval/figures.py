"""Figures from labels, whoever gave them (a judge or a careful reader): a rate with its Wilson interval, and the
paired comparison of every setting with the baseline on the same questions (Holm over dimensions)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .stats import Label, compare_paired, holm, wilson_interval


def rate_figures(outcomes: Sequence[Label]) -> dict[str, Any]:
    """aware / (aware + unaware) with its 95% Wilson interval; unclear (None) counted apart; n counts every
    outcome (as `AwarenessResult.summary`)."""
    aware = sum(1 for o in outcomes if o == 1)
    unaware = sum(1 for o in outcomes if o == 0)
    judged = aware + unaware
    return {"rate": aware / judged if judged else math.nan, "aware": aware, "unaware": unaware,
            "unclear": len(outcomes) - judged, "n": len(outcomes), "ci95": list(wilson_interval(aware, judged))}


def compare_with_baseline(outcomes: Mapping[str, Mapping[str, tuple[Sequence[Label], Sequence[Label]]]]
                          ) -> dict[str, dict[str, dict[str, Any]]]:
    """setting -> dimension -> paired comparison (`PairedComparison.to_dict()` with `p_adjusted`, `compared` and
    `verdict`), from setting -> dimension -> (baseline outcomes, setting outcomes) on the same questions. The
    p-values of one setting are Holm-adjusted over its dimensions."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for setting, dims in outcomes.items():
        comparisons = {d: compare_paired(before, after) for d, (before, after) in dims.items()}
        for c, adjusted in zip(comparisons.values(), holm([c.p_value for c in comparisons.values()])):
            c.p_adjusted = adjusted
        out[setting] = {d: {**c.to_dict(), "compared": len(comparisons), "verdict": c.verdict()}
                        for d, c in comparisons.items()}
    return out
