"""falstudy.stats against hand-computed values and scipy's own tests."""

import math

import pytest
from scipy import stats as sp

from falstudy import stats


def test_paired_t_matches_hand_computation():
    # d = [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3), df 2
    r = stats.paired_t([1.0, 2.0, 3.0])
    assert r.effect == pytest.approx(2.0)
    assert r.sd == pytest.approx(1.0)
    assert r.n == 3 and r.df == 2
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * se
    assert (r.lo, r.hi) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert r.p == pytest.approx(0.07417990022744853)  # 2 * P(T_2 > 2 sqrt 3)


def test_paired_t_agrees_with_scipy():
    d = [0.013, -0.004, 0.021, 0.008, 0.017]
    r = stats.paired_t(d)
    ref = sp.ttest_1samp(d, 0.0)
    assert r.p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r.lo, r.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_welch_agrees_with_scipy():
    a, b = [0.1, 0.3, 0.2, 0.25], [0.0, -0.05, 0.1, 0.02, 0.04]
    r = stats.welch_t(a, b)
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert r.effect == pytest.approx(sum(a) / 4 - sum(b) / 5)
    assert r.p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r.lo, r.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_verdicts_detect_a_known_difference_and_not_a_null_one():
    shift = [-0.05 + e for e in (0.004, -0.003, 0.001, -0.002, 0.0)]  # a real -0.05 at sd ~0.003
    null = [0.004, -0.003, 0.001, -0.002, 0.0]  # mean 0
    assert stats.verdict(stats.paired_t(shift), "less") == stats.HOLDS
    assert stats.verdict(stats.paired_t(shift), "greater") == stats.FAILS
    assert stats.verdict(stats.paired_t(null), "less") == stats.INCONCLUSIVE
    assert stats.verdict(stats.paired_t(null), "greater") == stats.INCONCLUSIVE
    with pytest.raises(ValueError):
        stats.verdict(stats.paired_t(null), "sideways")


def test_too_few_pairs_is_refused():
    with pytest.raises(ValueError):
        stats.paired_t([0.1])
    with pytest.raises(ValueError):
        stats.welch_t([0.1], [0.2, 0.3])


def test_seeds_needed_matches_the_textbook_sample_size():
    # one-sample/paired t, Cohen's d = 1, alpha 0.05 two-sided, power 0.8: n = 10 (power 0.803)
    assert stats.seeds_needed(1.0, 1.0) == 10
    assert stats.power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-3)
    assert stats.power(1.0, 1.0, 9) < 0.8
    # two groups, d = 1: 17 per group
    assert stats.seeds_needed(1.0, 1.0, two_sample=True) == 17
    assert stats.seeds_needed(0.0, 1.0) is None
    assert stats.seeds_needed(1e-6, 1.0) is None  # beyond MAX_SEEDS


def test_resolvable_effect_has_the_target_power():
    mde = stats.resolvable(0.01, 5)
    assert stats.power(mde, 0.01, 5) == pytest.approx(stats.POWER, abs=1e-6)
    assert stats.resolvable(0.01, 10) < mde  # more seeds resolve smaller effects


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_power_is_exact_and_monotone_at_two_pairs():
    # df = 1 is where scipy's lower-tail non-central t gives up; the power must not jump to 1
    assert stats.power(5.4, 1.0, 2) == pytest.approx(0.4509, abs=1e-3)
    grid = [stats.power(e, 1.0, 2) for e in (1, 2, 4, 5.4, 8, 10, 16, 20)]
    assert grid == sorted(grid) and grid[-1] < 1
    assert stats.resolvable(1.0, 2) == pytest.approx(11.55, abs=0.01)
    assert stats.power(6.0, 1.0, stats.seeds_needed(6.0, 1.0)) >= stats.POWER
