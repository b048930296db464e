"""What every experiment measures for one setting (awareness per dimension with Wilson intervals, judge-corrected
rates, perplexity) and how settings compare with a base on the same questions (paired)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ..eval import evaluate_awareness, perplexity
from ..eval.agreement import agreement_of
from ..eval.judges import Judge, RuleJudge
from ..eval.stats import JudgeAgreement, as_outcomes, compare_paired, corrected_rate, holm, wilson_interval
from ..scoring import ImportanceScores
from ..targets import TargetModules, _matches


def awareness_entry(result: Any, agreement: Optional[Mapping[str, JudgeAgreement]] = None, *,
                    keep_answers: bool = False) -> dict[str, Any]:
    """One dimension's figures: counts, raw rate with its 95% Wilson interval, the per-question labels (for
    paired comparisons) and, when the judge's agreement was measured, the judge-corrected rate."""
    judged = result.aware + result.unaware
    entry: dict[str, Any] = {**result.summary(), "ci95": list(wilson_interval(result.aware, judged)),
                             "labels": [r["label"] for r in result.records]}
    if agreement and result.dimension in agreement:
        entry["corrected"] = corrected_rate(as_outcomes(entry["labels"]), agreement[result.dimension]).to_dict()
    if keep_answers:
        entry["answers"] = result.records
    return entry


def measure(model: nn.Module, tokenizer: Any, questions: Mapping[str, Sequence[str]], *,
            judge: Optional[Judge] = None, max_new_tokens: int = 64, batch_size: int = 8,
            show_progress: bool = True, keep_answers: bool = False, chat_template: bool = True) -> dict[str, Any]:
    """Awareness of each dimension (see `awareness_entry`) and perplexity on the embedded text."""
    judge = judge or RuleJudge()
    results = evaluate_awareness(model, tokenizer, questions, judge=judge, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, show_progress=show_progress, chat_template=chat_template)
    agreement = agreement_of(judge)
    out: dict[str, Any] = {"perplexity": perplexity(model, tokenizer)["perplexity"]}
    for dim, r in results.items():
        out[dim] = awareness_entry(r, agreement, keep_answers=keep_answers)
    return out


def compare_rows(base: Mapping[str, Any], rows: Sequence[dict[str, Any]], dimensions: Sequence[str]) -> None:
    """Add to each measured row, per dimension, its paired comparison with `base` on the same questions
    (`row[dim]["paired"]`), with the p-values Holm-adjusted over the rows compared (per dimension)."""
    for dim in dimensions:
        measured = [r for r in rows if dim in r and "labels" in r[dim]]
        comparisons = [compare_paired(as_outcomes(base[dim]["labels"]), as_outcomes(r[dim]["labels"]))
                       for r in measured]
        for r, c, adjusted in zip(measured, comparisons, holm([c.p_value for c in comparisons])):
            c.p_adjusted = adjusted
            r[dim]["paired"] = {**c.to_dict(), "compared": len(comparisons), "verdict": c.verdict()}




def corrected_text(entry: Mapping[str, Any]) -> str:
    """'0.690 [0.55, 0.83]': the judge-corrected rate and its interval, or 'n/a' (judge not measured)."""
    c = entry.get("corrected")
    if not c or c["corrected"] != c["corrected"]:
        return "n/a"
    return f"{c['corrected']:.3f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"


def change_text(entry: Mapping[str, Any]) -> str:
    """'+0.050 [-0.02, 0.12]; +8/-3 flips; p=0.23 (Holm 0.46 of 3)': a paired comparison with the base."""
    c = entry.get("paired")
    if not c:
        return ""
    p = f"p={c['p_value']:.3g}"
    if c.get("compared", 1) > 1 and c.get("p_adjusted") is not None:
        p += f" (Holm {c['p_adjusted']:.3g} of {c['compared']})"
    return (f"{c['difference']:+.3f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]; +{c['improved']}/-{c['worsened']} "
            f"flips; {p}")


def restrict(scores: ImportanceScores, target_modules: TargetModules) -> ImportanceScores:
    """The scores of the modules matching `target_modules` ('all-linear' keeps all)."""
    if isinstance(target_modules, str) and target_modules == "all-linear":
        return scores
    return scores.subset(n for n in scores if _matches(n, target_modules))


def unclear_text(entry: Mapping[str, Any]) -> str:
    """'3 of 40 (7.5%)': the answers the judge gave no verdict on."""
    share = entry["unclear"] / entry["n"] if entry["n"] else 0.0
    return f"{entry['unclear']} of {entry['n']} ({share:.1%})"


def rate_text(entry: Mapping[str, Any]) -> str:
    """'0.720 [0.52, 0.86] (n=25)' for tables (n counts judged answers; unclear ones are named apart)."""
    low, high = entry["ci95"]
    judged = entry["aware"] + entry["unaware"]
    n = f"n={judged}" if judged == entry["n"] else f"n={judged} judged of {entry['n']}"
    return f"{entry['rate']:.3f} [{low:.2f}, {high:.2f}] ({n})"
