"""Statistics over seeds: Student-t confidence intervals and paired comparisons."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval ``[low, high]`` over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The Student-t interval ``mean ± t_{(1+c)/2, n-1} s / sqrt(n)`` (``s``: sample std).

    Assumes the values are independent draws from one normal distribution, here the accuracies
    of one configuration over seeds. Needs at least 2 values; with identical values the interval
    has width 0.
    """
    from scipy import stats

    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"`values` must be 1-D with at least 2 entries, got shape {x.shape}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / np.sqrt(len(x))
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1)) * sem
    return Interval(mean, mean - half, mean + half, len(x))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """The t interval of the per-seed differences ``a - b`` (the paired t-test's interval).

    ``a[i]`` and ``b[i]`` must come from the same seed (same initialisation and data order):
    pairing removes the seed's share of the variance, which two separate intervals would keep.
    The difference is significant at ``confidence`` exactly when the interval excludes 0.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must pair up (same shape), got {a.shape} and {b.shape}.")
    return t_interval(a - b, confidence)
