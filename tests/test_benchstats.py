"""The benchmark spread helper on hand-made numbers: quantiles, the bootstrap interval of the
median, per-round ratios, and when the adaptive rounds stop."""

from __future__ import annotations

import pytest

from falstudy.benchstats import Rounds, Spread, bootstrap_median, load, quantile, ratios


def test_quantile_interpolates_like_numpy():
    assert quantile([4, 1, 3, 2], 0.25) == 1.75 and quantile([4, 1, 3, 2], 0.75) == 3.25
    assert quantile([7], 0.9) == 7


def test_the_bootstrap_interval_of_a_median_of_five():
    # P(resampled median <= 10) = P(>= 3 of 5 draws are the 10) = 0.058 > 0.025: the interval is the whole range
    assert bootstrap_median([10, 20, 30, 40, 50]) == (10.0, 50.0)
    # 41 rounds tightly around 1.0 and one outlier: the median's interval stays tight
    values = [1.0 + 0.001 * (i % 5 - 2) for i in range(41)] + [3.0]
    lo, hi = bootstrap_median(values)
    assert 0.998 <= lo <= 1.0 <= hi <= 1.002
    assert bootstrap_median(values) == (lo, hi)  # seeded: the same every time


def test_spread_of_identical_rounds_is_a_point():
    s = Spread.of([0.75] * 6)
    assert (s.median, s.lo, s.hi, s.q1, s.q3, s.n) == (0.75, 0.75, 0.75, 0.75, 0.75, 6)
    assert s.half_width == 0 and s.narrow(0.01) and s.text() == "0.750 [0.750, 0.750]"


def test_the_issue_s_two_runs_would_have_shown_their_spread():
    # fal/baseline per round, noisy as on the shared machine (0.750 and 0.515 were two medians)
    s = Spread.of([0.52, 0.75, 0.60, 0.71, 0.55, 0.66])
    assert s.median == pytest.approx(0.63) and s.lo < 0.6 < 0.7 < s.hi
    assert s.q1 == pytest.approx(0.5625) and s.q3 == pytest.approx(0.6975)
    assert not s.narrow(0.03)


def test_ratios_pair_rounds():
    assert ratios([2.0, 3.0], [4.0, 6.0]) == [0.5, 0.5]
    with pytest.raises(ValueError, match="same rounds"):
        ratios([1.0], [1.0, 2.0])


def test_rounds_stop_when_narrow_or_at_the_cap():
    rounds = Rounds(min_rounds=3, max_rounds=8, target=0.02)
    assert not rounds.done([[1.0, 1.0]])  # fewer than min_rounds
    assert rounds.done([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])  # all tight at min_rounds
    noisy = [1.0, 1.5, 0.7, 1.2]
    assert not rounds.done([[1.0] * 4, noisy])  # one series still wide: go on
    assert rounds.done([[1.0] * 8, noisy * 2])  # the cap
    verdict = rounds.verdict([Spread.of([1.0] * 8), Spread.of(noisy * 2)])
    assert verdict.startswith("8 rounds: 1 interval(s) still wider than +-2%") and "raise --max-rounds" in verdict
    assert rounds.verdict([Spread.of([1.0] * 3)]) == "3 rounds: every interval within +-2%"
    with pytest.raises(ValueError):
        Rounds(min_rounds=5, max_rounds=2)


def test_load_reports_the_load_average_and_cores():
    info = load()
    assert info["cores"] >= 1 and info["load_1m"] >= 0
