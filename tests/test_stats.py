"""The statistics of the figures, on hand-made cases with known answers."""

import math

import pytest

from dean_hf.eval.stats import (JudgeAgreement, as_outcomes, compare_paired, corrected_rate, detectable_difference,
                                holm, mcnemar_exact, rogan_gladen)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5 ** 10)  # all ten flips one way
    assert mcnemar_exact(3, 7) == pytest.approx(0.34375)  # 2 * P(X <= 3), X ~ Bin(10, 1/2) = 2 * 176/1024
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(16, 6) == pytest.approx(0.05248, abs=1e-4)  # the blind reading's fairness flips


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    adjusted = holm([0.01, math.nan])
    assert adjusted[0] == pytest.approx(0.01) and math.isnan(adjusted[1])


def test_paired_comparison_counts_flips_and_bootstraps():
    before = as_outcomes(["aware"] * 6 + ["unaware"] * 4 + ["unclear"])
    after = as_outcomes(["aware"] * 5 + ["unaware"] + ["aware"] * 3 + ["unaware", "aware"])
    c = compare_paired(before, after, n_boot=4000)
    assert (c.n, c.improved, c.worsened, c.unclear) == (10, 3, 1, 1)
    assert c.before == pytest.approx(0.6) and c.after == pytest.approx(0.8) and c.difference == pytest.approx(0.2)
    assert c.ci95[0] < 0.2 < c.ci95[1] and c.p_value == pytest.approx(mcnemar_exact(3, 1))
    same = compare_paired(before, before)
    assert same.difference == 0 and same.ci95 == (0.0, 0.0) and same.p_value == 1.0
    with pytest.raises(ValueError, match="same questions"):
        compare_paired(before, after[:-1])


def test_detectable_difference_formula():
    from scipy.stats import norm

    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert detectable_difference(100, 0.2) == pytest.approx(z * math.sqrt(0.2 / 100))
    assert detectable_difference(2165, 0.1) < detectable_difference(80, 0.1)


def test_rogan_gladen_on_a_known_confusion_matrix():
    # A judge with sensitivity 0.9 and specificity 0.8 sees 0.9 * 0.6 + 0.2 * 0.4 = 0.62 when the truth is 0.6.
    assert rogan_gladen(0.62, 0.9, 0.8) == pytest.approx(0.6)
    assert rogan_gladen(0.05, 0.9, 0.8) == 0.0 and math.isnan(rogan_gladen(0.5, 0.5, 0.5))
    agreement = JudgeAgreement.from_labels("privacy", ["aware"] * 10 + ["unaware"] * 10 + ["unclear"],
                                           ["aware"] * 9 + ["unaware"] + ["aware"] * 2 + ["unaware"] * 8 + ["aware"])
    assert (agreement.n, agreement.sensitivity, agreement.specificity) == (20, 0.9, 0.8)
    assert agreement.accuracy == pytest.approx(0.85) and agreement.kappa == pytest.approx(0.7)
    outcomes = [1] * 62 + [0] * 38
    corrected = corrected_rate(outcomes, agreement, n_boot=4000)
    assert corrected.raw == pytest.approx(0.62) and corrected.corrected == pytest.approx(0.6)
    low, high = corrected.ci95
    plain = 1.96 * math.sqrt(0.62 * 0.38 / 100) / 0.7  # the sampling error alone, scaled by 1 / (se + sp - 1)
    assert low < 0.6 < high and (high - low) / 2 > plain  # the calibration's own uncertainty widens it


def test_a_judge_near_chance_gives_a_wide_interval_not_false_certainty():
    """With the shipped blind fairness agreement (specificity about 0.24), a raw rate below the judge's false-positive
    rate corrects to 0, and its interval must not collapse to [0, 0]."""
    from dean_hf.eval.agreement import shipped_agreement

    fairness = shipped_agreement("rules")["dimensions"]["fairness"]
    for raw in (0.3, 0.5, 0.7):
        outcomes = [1] * int(100 * raw) + [0] * (100 - int(100 * raw))
        low, high = corrected_rate(outcomes, fairness, n_boot=4000).ci95
        assert high - low > 0.5, (raw, low, high)
