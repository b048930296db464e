"""`dean tune`'s split and objective at their boundaries: largest remainders on uneven categories, a test part that
must hold questions, the perplexity budget at exactly +3 %, NaN gains, and the tie-break between equal trials."""

import math

import pytest

from dean_hf import DeanError
from dean_hf.experiments.tune import Objective, choose, split_questions

QUESTIONS = {"fairness": [f"fair {i}?" for i in range(10)]}
CATEGORIES = {"fairness": ["a"] * 5 + ["b"] * 3 + ["c"] * 2}


def category_counts(part: list[str]) -> dict[str, int]:
    counts = {"a": 0, "b": 0, "c": 0}
    for q in part:
        counts[CATEGORIES["fairness"][QUESTIONS["fairness"].index(q)]] += 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_gives_each_category_its_largest_remainder_share(seed):
    # dev 4 of 10: exact shares 2.0 / 1.2 / 0.8; floors 2 / 1 / 0 leave one question for the largest remainder
    # (0.8, category c): 2 / 1 / 1. Dropping the smallest category would give 2 / 2 / 0.
    dev, test = split_questions(QUESTIONS, dev_size=4, seed=seed, categories=CATEGORIES)
    assert category_counts(dev["fairness"]) == {"a": 2, "b": 1, "c": 1}
    assert category_counts(test["fairness"]) == {"a": 3, "b": 2, "c": 1}
    # dev 5: shares 2.5 / 1.5 / 1.0; floors 2 / 1 / 1, remainders 0.5 / 0.5 / 0: the tie goes to a (name order).
    dev, _ = split_questions(QUESTIONS, dev_size=5, seed=seed, categories=CATEGORIES)
    assert category_counts(dev["fairness"]) == {"a": 3, "b": 1, "c": 1}


def test_dev_size_must_leave_questions_in_both_parts():
    with pytest.raises(DeanError, match=r"dev_size=10 for 'fairness'.*between 1 and 9"):
        split_questions(QUESTIONS, dev_size=10)  # the test part would be empty
    with pytest.raises(DeanError, match="dev_size=0"):
        split_questions(QUESTIONS, dev_size=0)
    with pytest.raises(DeanError, match=r"dev_size=True"):
        split_questions(QUESTIONS, dev_size=True)
    dev, test = split_questions(QUESTIONS, dev_size=9)  # the largest that leaves a test question
    assert len(dev["fairness"]) == 9 and len(test["fairness"]) == 1
    dev, test = split_questions(QUESTIONS, dev_size=1)
    assert len(dev["fairness"]) == 1 and len(test["fairness"]) == 9


def test_objective_accepts_exactly_the_perplexity_budget():
    objective = Objective(max_perplexity_increase=0.03)
    gains = {"fairness": 0.1, "privacy": 0.05}
    assert objective.value({"gains": gains, "perplexity_change": 0.03}) == 0.05  # at the budget: allowed
    assert objective.value({"gains": gains, "perplexity_change": math.nextafter(0.03, 1)}) == -math.inf
    assert objective.value({"gains": gains, "perplexity_change": -0.2}) == 0.05
    assert objective.value({"perplexity_change": 0.0}) == -math.inf  # an empty mask is never chosen


def test_a_dimension_without_a_judged_question_gives_minus_infinity():
    objective = Objective()
    for gains in ({"fairness": math.nan, "privacy": 0.3}, {"fairness": 0.3, "privacy": math.nan}):
        assert objective.value({"gains": gains, "perplexity_change": 0.0}) == -math.inf
    only = Objective(dimensions=("privacy",))  # a dimension outside the objective does not count
    assert only.value({"gains": {"fairness": math.nan, "privacy": 0.3}, "perplexity_change": 0.0}) == 0.3


def test_equal_objectives_choose_the_smaller_edit():
    trials = [{"label": "big", "objective": 0.1, "masked": 500}, {"label": "small", "objective": 0.1, "masked": 20},
              {"label": "worse", "objective": 0.05, "masked": 1},
              {"label": "small too", "objective": 0.1, "masked": 20}]
    assert choose(trials)["label"] == "small"  # fewer changed weights wins; then the first in grid order
    assert choose(trials[::-1])["label"] == "small too"
    trials.append({"label": "best", "objective": 0.2, "masked": 10_000})
    assert choose(trials)["label"] == "best"  # the objective comes first
    excluded = [{"label": "x", "objective": -math.inf, "masked": 9}, {"label": "y", "objective": -math.inf,
                                                                      "masked": 3}]
    assert choose(excluded)["label"] == "y"


def test_the_split_seed_defaults_to_0_and_the_grid_spells_each_setting():
    from dean_hf.experiments.tune import Setting, TuneSpace

    assert split_questions(QUESTIONS, dev_size=4) == split_questions(QUESTIONS, dev_size=4, seed=0)
    assert split_questions(QUESTIONS, dev_size=4) != split_questions(QUESTIONS, dev_size=4, seed=1)
    space = TuneSpace(qs=(0.1,), ps=(0.2,), module_sets=("mlp",), variants=("zero", "scale"), scales=(0.5,))
    assert space.settings() == [Setting("mlp", 0.1, 0.2, "zero", 0.0, "snip", 128),
                                Setting("mlp", 0.1, 0.2, "scale", 0.5, "snip", 128)]
    assert Objective().describe() == ("maximise min(gain in fairness and privacy awareness) on the development "
                                      "questions, subject to perplexity within +3% of the base model's")
