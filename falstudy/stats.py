"""Small-sample statistics behind the verdicts: paired and two-sample t tests, their intervals,
and how many seeds would resolve an effect.

Why Student's t and not a permutation test: the unit of replication is a seed, and a study has
3-10 of them. An exact sign-flip test over n pairs cannot give a two-sided p below 2 / 2**n
(0.25 at n = 3, 0.0625 at n = 5), so at these n it can never call anything. The paired t test
is exact when the per-seed differences are normal, which is a fair model for a mean over
thousands of tokens; it is what we state in every row (``test``).

A directional claim "d < 0" (or "d > 0") gets one of three verdicts from the 95% interval of d:
``holds`` (the interval lies on the claimed side), ``does not hold`` (it lies on the other side),
or ``inconclusive at this scale`` (it straddles zero). For an inconclusive row,
``seeds_needed`` is the smallest n at which a two-sided t test at alpha = 0.05 would detect the
observed effect at the observed spread with 80% power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this scale"
Direction = Literal["less", "greater"]
ALPHA, POWER = 0.05, 0.8
MAX_SEEDS = 1000  # beyond this an effect is, for a study of seeds, unresolvable


@dataclass(frozen=True)
class TestResult:
    """A difference with its 95% interval and two-sided p-value."""

    effect: float  # mean difference (claimed-minus-reference, in the measure's units)
    lo: float
    hi: float
    p: float
    n: int  # pairs (paired) or the smaller group (two-sample)
    sd: float  # sd of the differences (paired) or pooled-by-Welch sd (two-sample)
    test: str
    df: float  # degrees of freedom of the t reference distribution


def _t():
    from scipy import stats

    return stats.t


def paired_t(diffs: Sequence[float]) -> TestResult:
    """One-sample t test of per-pair differences against 0 (the paired t test)."""
    d = [float(x) for x in diffs]
    n = len(d)
    if n < 2:
        raise ValueError(f"a paired t test needs at least 2 pairs, got {n}")
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    df = n - 1
    return _finish(mean, sd / math.sqrt(n), df, n, sd, "paired t")


def welch_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sample t test of mean(a) - mean(b) without assuming equal variances (Welch)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"Welch's t test needs at least 2 values per group, got {na} and {nb}")
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        df = float(na + nb - 2)
    else:
        df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    # the per-seed sd that, with min(na, nb) seeds a group, gives this standard error
    n = min(na, nb)
    sd = math.sqrt(se2 * n / 2)
    return _finish(ma - mb, math.sqrt(se2), df, n, sd, "Welch t")


def _finish(mean: float, se: float, df: float, n: int, sd: float, test: str) -> TestResult:
    t = _t()
    half = t.ppf(1 - ALPHA / 2, df) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * t.sf(abs(mean) / se, df))
    return TestResult(mean, mean - half, mean + half, p, n, sd, test, float(df))


def verdict(result: TestResult, direction: Direction) -> str:
    """holds / does not hold / inconclusive at this scale, for the claim effect < 0 ("less")
    or effect > 0 ("greater"), from the 95% interval."""
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater', got {direction!r}")
    if result.hi < 0:
        return HOLDS if direction == "less" else FAILS
    if result.lo > 0:
        return HOLDS if direction == "greater" else FAILS
    return INCONCLUSIVE


def power(effect: float, sd: float, n: int, two_sample: bool = False) -> float:
    """Power of a two-sided t test at alpha = 0.05 with n pairs (or n per group)."""
    from scipy import stats

    if sd == 0:
        return 1.0 if effect != 0 else ALPHA
    if two_sample:
        df, nc = 2 * n - 2, abs(effect) / (sd * math.sqrt(2 / n))
    else:
        df, nc = n - 1, abs(effect) / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - ALPHA / 2, df)
    # both tails as upper tails: P(T < -crit) = P(-T > crit), and -T is non-central t with -nc
    # (scipy's nct.cdf returns NaN far out in the lower tail at small df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def seeds_needed(effect: float, sd: float, two_sample: bool = False) -> int | None:
    """Smallest n (pairs, or seeds per group) with 80% power to detect ``effect`` at spread
    ``sd``; None if not even MAX_SEEDS would do (an effect of zero never resolves)."""
    if effect == 0 or not math.isfinite(effect) or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    # the normal approximation as a start, then step to the exact t power (it grows with n)
    z = 1.959963984540054 + 0.8416212335729143
    n = max(2, int((z * sd / abs(effect)) ** 2 * (2 if two_sample else 1)) - 2)
    if n > MAX_SEEDS:
        return None
    while power(effect, sd, n, two_sample) < POWER:
        n += 1
        if n > MAX_SEEDS:
            return None
    while n > 2 and power(effect, sd, n - 1, two_sample) >= POWER:
        n -= 1
    return n


def resolvable(sd: float, n: int, two_sample: bool = False) -> float:
    """The smallest |effect| this design detects with 80% power at this spread (in the
    measure's units): what "inconclusive" can and cannot rule out."""
    if sd == 0 or n < 2:
        return 0.0 if sd == 0 else math.inf
    lo, hi = 0.0, sd
    while power(hi, sd, n, two_sample) < POWER:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if power(mid, sd, n, two_sample) >= POWER:
            hi = mid
        else:
            lo = mid
    return hi


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the given claims)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
