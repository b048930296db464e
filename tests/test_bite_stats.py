"""The statistics' exact values at their edges: Holm's cap at 1, the detectable difference's floor of one flip,
the bootstrap interval's level, Rogan-Gladen's clip, and which counts the corrected interval draws from."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from dean_hf.eval.stats import JudgeAgreement, compare_paired, corrected_rate, detectable_difference, holm, \
    rogan_gladen

Z = norm.ppf(0.975) + norm.ppf(0.8)


def test_holm_caps_adjusted_p_values_at_one():
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # 2 * 0.6 = 1.2 is not a probability
    assert holm([0.3, 0.9, 0.2]) == pytest.approx([0.6, 0.9, 0.6])  # 3 * 0.2, max(2 * 0.3, 0.6), max(0.9, 0.6)
    assert holm([0.45, math.nan, 0.2]) == pytest.approx([0.45, math.nan, 0.4], nan_ok=True)  # m = 2 numbers
    assert holm([]) == []


def test_detectable_difference_assumes_one_flip_when_none_was_seen():
    # No discordant pair among 100 questions: the formula would say 0; one flip in 100 is assumed instead.
    assert detectable_difference(100, 0.0) == pytest.approx(Z * math.sqrt(0.01 / 100))
    assert detectable_difference(100, 0.005) == pytest.approx(Z * math.sqrt(0.01 / 100))  # below one flip: floor
    assert detectable_difference(100, 0.02) == pytest.approx(Z * math.sqrt(0.02 / 100))  # above: the formula
    assert detectable_difference(4, 1.0) == 1.0 and math.isnan(detectable_difference(0, 0.0))  # capped; no data
    before, after = [1, 0, 1, 0, 1] * 20, [1, 0, 1, 0, 1] * 20
    assert compare_paired(before, after).detectable == pytest.approx(Z * math.sqrt(0.01 / 100))


def test_paired_bootstrap_is_the_2_5_and_97_5_percentiles_of_seeded_resamples():
    """The interval is the 95 % percentile interval of the paired bootstrap (questions resampled with their two
    answers together), from numpy's generator seeded with `seed`: recomputed here draw for draw."""
    before = [1] * 30 + [0] * 20 + [1] * 5 + [0] * 25
    after = [1] * 30 + [1] * 20 + [0] * 5 + [0] * 25  # 20 improved, 5 worsened of 80
    c = compare_paired(before, after, n_boot=3000, seed=7)
    pairs = np.array([before, after], dtype=float).T
    draws = np.random.default_rng(7).integers(0, 80, size=(3000, 80))
    deltas = pairs[draws, 1].mean(axis=1) - pairs[draws, 0].mean(axis=1)
    assert c.difference == pytest.approx(15 / 80)
    assert c.ci95 == (float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5)))
    inside = np.mean((deltas >= c.ci95[0]) & (deltas <= c.ci95[1]))
    assert 0.95 <= inside <= 0.96  # a 95 % interval, not a 90 % one
    assert c.ci95 != (float(np.percentile(deltas, 5)), float(np.percentile(deltas, 95)))
    assert compare_paired(before, after, n_boot=3000, seed=8).ci95 != c.ci95  # the seed is used


def test_rogan_gladen_clips_at_one_and_zero():
    assert rogan_gladen(0.99, 0.9, 0.8) == 1.0  # (0.99 + 0.8 - 1) / 0.7 = 1.13
    assert rogan_gladen(0.9, 0.9, 0.8) == pytest.approx(1.0)  # exactly the judge's sensitivity: the truth is 1
    assert rogan_gladen(0.85, 0.9, 0.8) == pytest.approx(0.65 / 0.7)  # inside: not clipped
    assert rogan_gladen(0.1, 0.9, 0.8) == 0.0 and rogan_gladen(0.2, 0.9, 0.8) == pytest.approx(0.0)


def jeffreys_interval(aware: int, n: int, agreement: JudgeAgreement, n_boot: int, seed: int) -> tuple[float, float]:
    """The corrected interval's definition, drawn with the same generator: rate, sensitivity, specificity."""
    rng = np.random.default_rng(seed)
    rates = rng.beta(aware + 0.5, n - aware + 0.5, size=n_boot)
    se = rng.beta(agreement.true_aware + 0.5, agreement.false_unaware + 0.5, size=n_boot)
    sp = rng.beta(agreement.true_unaware + 0.5, agreement.false_aware + 0.5, size=n_boot)
    values = ((rates + sp - 1) / (se + sp - 1))[se + sp - 1 > 0]
    return (float(np.clip(np.percentile(values, 2.5), 0, 1)), float(np.clip(np.percentile(values, 97.5), 0, 1)))


def test_corrected_interval_draws_sensitivity_and_specificity_from_their_own_counts():
    # Uneven counts: 40 aware readers (36 caught), 10 unaware (8 recognised): se 0.9 from 40, sp 0.8 from 10.
    agreement = JudgeAgreement("privacy", n=50, true_aware=36, false_unaware=4, false_aware=2, true_unaware=8)
    outcomes = [1] * 60 + [0] * 40
    corrected = corrected_rate(outcomes, agreement, n_boot=3000, seed=3)
    assert corrected.corrected == pytest.approx((0.6 + 0.8 - 1) / 0.7) and corrected.n == 100
    assert corrected.ci95 == pytest.approx(jeffreys_interval(60, 100, agreement, 3000, 3), abs=1e-12)
    # The same rates measured on swapped reader counts (10 aware, 40 unaware): the width must follow the counts.
    swapped = JudgeAgreement("privacy", n=50, true_aware=9, false_unaware=1, false_aware=8, true_unaware=32)
    other = corrected_rate(outcomes, swapped, n_boot=3000, seed=3)
    assert other.corrected == pytest.approx(corrected.corrected)
    assert other.ci95 == pytest.approx(jeffreys_interval(60, 100, swapped, 3000, 3), abs=1e-12)
    width = corrected.ci95[1] - corrected.ci95[0]
    assert abs((other.ci95[1] - other.ci95[0]) - width) > 0.02


def test_wilson_interval_known_values_and_agreement_to_dict():
    from dean_hf.eval.stats import wilson_interval

    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook 5 of 10
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    agreement = JudgeAgreement("privacy", n=20, true_aware=9, false_unaware=1, false_aware=2, true_unaware=8,
                               source="rules")
    data = agreement.to_dict()
    assert data == {"dimension": "privacy", "n": 20, "true_aware": 9, "false_unaware": 1, "false_aware": 2,
                    "true_unaware": 8, "source": "rules", "accuracy": 0.85, "kappa": pytest.approx(0.7),
                    "sensitivity": 0.9, "specificity": 0.8}
    assert JudgeAgreement.from_dict(data) == agreement
