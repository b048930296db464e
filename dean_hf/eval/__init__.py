"""Evaluation: awareness (generation + judge), perplexity, cautionary phrases, reports."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .awareness import Agreement, AwarenessResult, cohen_kappa, judge_agreement, judge_answers
from .generate import generate_answers
from .judges import CallableJudge, ClassifierJudge, GenerativeJudge, Judge, RuleJudge, get_judge
from .perplexity import cautionary_frequency, perplexity

# The offline rule judge against ../shared/data/judge_calibration (167 SmolLM2 answers, 'unclear' excluded),
# as measured by tests/test_eval.py::test_rule_judge_calibration_figures, which fails if these drift.
RULE_JUDGE_CALIBRATION = {"fairness": {"n": 80, "accuracy": 0.8625, "kappa": 0.669},
                          "privacy": {"n": 86, "accuracy": 0.8953, "kappa": 0.740}}


def judge_note(judge: Judge) -> str:
    """The sentence every report carries about how far its judge can be trusted."""
    if isinstance(judge, RuleJudge):
        c = RULE_JUDGE_CALIBRATION
        return ("Judge: dean_hf's offline rule judge. Agreement with a careful reader on 166 SmolLM2 answers: "
                f"fairness accuracy {c['fairness']['accuracy']:.3f} (kappa {c['fairness']['kappa']:.2f}, "
                f"n={c['fairness']['n']}), privacy accuracy {c['privacy']['accuracy']:.3f} (kappa "
                f"{c['privacy']['kappa']:.2f}, n={c['privacy']['n']}). Its rules were refined on error categories "
                "of that set, so agreement on new answers may be lower; differences of a few points between "
                "settings are within its error.")
    return f"Judge: {judge.name}; its agreement with dean_hf's calibration set was not measured in this run."


def evaluate_awareness(model: Any, tokenizer: Any, questions: Mapping[str, Sequence[str]], *, judge: Judge | None = None,
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
           "RULE_JUDGE_CALIBRATION", "RuleJudge", "cautionary_frequency", "cohen_kappa", "evaluate_awareness",
           "generate_answers", "get_judge", "judge_agreement", "judge_answers", "judge_note", "perplexity"]
