"""What every experiment measures for one setting: awareness per dimension (with Wilson intervals) and perplexity."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ..eval import evaluate_awareness, perplexity
from ..eval.judges import Judge, RuleJudge
from ..scoring import ImportanceScores
from ..targets import TargetModules, _matches


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (NaN when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def measure(model: nn.Module, tokenizer: Any, questions: Mapping[str, Sequence[str]], *,
            judge: Optional[Judge] = None, max_new_tokens: int = 64, batch_size: int = 8,
            show_progress: bool = True, keep_answers: bool = False) -> dict[str, Any]:
    """Awareness of each dimension (rate, counts, n, 95% interval) and perplexity on the embedded text."""
    results = evaluate_awareness(model, tokenizer, questions, judge=judge or RuleJudge(), max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, show_progress=show_progress)
    out: dict[str, Any] = {"perplexity": perplexity(model, tokenizer)["perplexity"]}
    for dim, r in results.items():
        low, high = wilson_interval(r.aware, r.aware + r.unaware)
        out[dim] = {**r.summary(), "ci95": [low, high]}
        if keep_answers:
            out[dim]["answers"] = r.records
    return out


def restrict(scores: ImportanceScores, target_modules: TargetModules) -> ImportanceScores:
    """The scores of the modules matching `target_modules` ('all-linear' keeps all)."""
    if isinstance(target_modules, str) and target_modules == "all-linear":
        return scores
    return scores.subset(n for n in scores if _matches(n, target_modules))


def rate_text(entry: Mapping[str, Any]) -> str:
    """'0.720 [0.52, 0.86] (n=25)' for tables (n counts judged answers; unclear ones are named apart)."""
    low, high = entry["ci95"]
    judged = entry["aware"] + entry["unaware"]
    n = f"n={judged}" if judged == entry["n"] else f"n={judged} judged of {entry['n']}"
    return f"{entry['rate']:.3f} [{low:.2f}, {high:.2f}] ({n})"
