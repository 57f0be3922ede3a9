"""The spread of a benchmark ratio, from rounds measured side by side.

A benchmark times every model once per round (round-robin), so machine noise hits the models of
one round alike; a ratio is taken per round (model / baseline of the same round) and summarised
over rounds by its median, interquartile range, and a percentile bootstrap interval of the
median (resampling rounds). ``Rounds`` decides when to stop: after ``min_rounds``, once every
tracked interval is narrower than ``target`` (relative half-width), or at ``max_rounds`` (then it
says the interval is still wide). ``load()`` records how busy the machine was.

    spread = Spread.of([0.74, 0.76, 0.75, 0.80, 0.73])
    spread.median, spread.lo, spread.hi, spread.q1, spread.q3, spread.half_width
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95
RESAMPLES = 2000


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty sequence."""
    data = sorted(values)
    pos = q * (len(data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def bootstrap_median(values: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (rounds resampled with replacement; seeded)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, len(data), size=(resamples, len(data)))], axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float  # bootstrap interval of the median
    hi: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float], *, level: float = LEVEL, seed: int = 0) -> "Spread":
        if not values:
            raise ValueError("no rounds to summarise")
        lo, hi = bootstrap_median(values, level=level, seed=seed)
        return cls(statistics.median(values), lo, hi, quantile(values, 0.25), quantile(values, 0.75), len(values))

    @property
    def half_width(self) -> float:
        """Half the interval's width relative to the median (0.05: within about +-5 %)."""
        scale = abs(self.median) or 1.0
        return (self.hi - self.lo) / 2 / scale

    def narrow(self, target: float) -> bool:
        return self.n >= 2 and self.half_width <= target

    def text(self, fmt: str = ".3f") -> str:
        return f"{self.median:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}]"


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two series measured in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError(f"{len(numerator)} and {len(denominator)} rounds: ratios need the same rounds")
    return [a / b for a, b in zip(numerator, denominator)]


@dataclass
class Rounds:
    """When to stop measuring: ``done(series)`` after each round, ``series`` the per-round values
    of every tracked quantity (ratios, errors)."""

    min_rounds: int = 5
    max_rounds: int = 30
    target: float = 0.03  # relative half-width of the 95 % interval

    def __post_init__(self) -> None:
        if self.min_rounds < 1 or self.max_rounds < self.min_rounds:
            raise ValueError(f"rounds: need 1 <= min_rounds ({self.min_rounds}) <= max_rounds ({self.max_rounds})")

    def done(self, series: Sequence[Sequence[float]]) -> bool:
        n = min((len(s) for s in series), default=0)
        if n < self.min_rounds:
            return False
        if n >= self.max_rounds:
            return True
        return all(Spread.of(s).narrow(self.target) for s in series)

    def verdict(self, spreads: Sequence[Spread]) -> str:
        wide = [s for s in spreads if not s.narrow(self.target)]
        n = max((s.n for s in spreads), default=0)
        if not wide:
            return f"{n} rounds: every interval within +-{self.target:.0%}"
        worst = max(s.half_width for s in wide)
        return (f"{n} rounds: {len(wide)} interval(s) still wider than +-{self.target:.0%} (widest +-{worst:.0%}); "
                "the machine is noisy or the rounds too short: raise --max-rounds or --steps, or quiet the machine")


def load() -> dict[str, float]:
    """The machine's load: 1-minute load average and cores (a load near or above the cores means
    other work competed with the benchmark)."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        one = five = float("nan")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"load_1m": one, "load_5m": five, "cores": float(cores)}
