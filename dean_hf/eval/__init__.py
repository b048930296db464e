"""Evaluation: awareness (generation + judge), perplexity, cautionary phrases, reports."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .awareness import Agreement, AwarenessResult, cohen_kappa, judge_agreement, judge_answers
from .generate import generate_answers
from .judge_models import ClassifierJudge, GenerativeJudge, get_judge
from .judges import CallableJudge, Judge, RuleJudge
from .perplexity import cautionary_frequency, perplexity
from .agreement import agreement_of, judge_note, measure_agreement
from .stats import JudgeAgreement, PairedComparison, compare_paired, corrected_rate

def evaluate_awareness(model: Any, tokenizer: Any, questions: Mapping[str, Sequence[str]], *,
                       judge: Judge | None = None,
                       max_new_tokens: int = 64, batch_size: int = 8, show_progress: bool = True,
                       chat_template: bool = True) -> dict[str, AwarenessResult]:
    """Generate greedy answers to each dimension's questions and judge them: dimension -> result."""
    judge = judge or RuleJudge()
    out = {}
    for dim, qs in questions.items():
        answers = generate_answers(model, tokenizer, list(qs), max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   show_progress=show_progress, chat_template=chat_template,
                                   description=f"answering {dim}")
        out[dim] = judge_answers(judge, dim, list(qs), answers)
    return out


__all__ = ["Agreement", "AwarenessResult", "CallableJudge", "ClassifierJudge", "GenerativeJudge", "Judge",
           "JudgeAgreement", "PairedComparison", "RuleJudge", "agreement_of", "compare_paired", "corrected_rate",
           "measure_agreement", "cautionary_frequency", "cohen_kappa", "evaluate_awareness",
           "generate_answers", "get_judge", "judge_agreement", "judge_answers", "judge_note", "perplexity"]
