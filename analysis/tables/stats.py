"""The statistics of the comparison tables: mean, standard deviation and n over seeds, and
Welch's t interval of a difference with a plain verdict.

A difference of two initialisations (or of a run and a paper's number) is judged by
Welch's two-sample t interval at 95 %: the difference of the means, its standard error
``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` and the Welch-Satterthwaite degrees of freedom. When
the interval excludes zero the verdict is "beyond noise", else "within noise". With one
seed on either side, or the same value from every seed on both sides, there is no noise
estimate and no verdict. A spread a paper publishes
enters as that side's standard deviation; when the paper does not say over how many runs,
its number counts as one run whose spread is known (its degrees of freedom infinite).

The t quantile is computed here (regularised incomplete beta function by its continued
fraction, then bisection), so the suite needs no statistics package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95
TEST_NAME = "Welch's t, 95 % interval"
BEYOND, WITHIN, ONE_SEED = "beyond noise", "within noise", "one seed, no noise estimate"
# Every seed gave the same value on both sides (k-NN on one checkpoint is deterministic):
# the seeds measured no noise, which is not the same as there being none.
NO_SPREAD = "same value for every seed, no noise estimate"


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof 1) and count of one row's values.

    ``df``: degrees of freedom of ``std`` (default ``n - 1``; ``math.inf`` for a published
    spread taken as known).
    """

    mean: float
    std: float | None
    n: int
    df: float | None = None

    @property
    def dof(self) -> float:
        """The degrees of freedom of the spread estimate."""
        return float(self.n - 1) if self.df is None else float(self.df)

    @property
    def has_spread(self) -> bool:
        """Whether the noise of this value is known (two or more seeds, or a published spread)."""
        return self.std is not None and self.dof > 0


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation (None for one value) and n of ``values`` (at least one)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Summary(mean, std, n)


@dataclass(frozen=True)
class Difference:
    """``a - b`` with its interval (None without a noise estimate) and the verdict."""

    delta: float
    low: float | None
    high: float | None
    df: float | None
    verdict: str


# --------------------------------------------------------------------------- t distribution
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (normal for infinite df)."""
    if math.isinf(df):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``; ``p`` in (0, 1))."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- the test
def welch(a: Summary, b: Summary, level: float = LEVEL) -> Difference:
    """Welch's t interval for ``a.mean - b.mean`` and its verdict (none when a side lacks a spread)."""
    delta = a.mean - b.mean
    if not (a.has_spread and b.has_spread):
        return Difference(delta, None, None, None, ONE_SEED)
    va, vb = a.std**2 / a.n, b.std**2 / b.n  # type: ignore[operator]
    se = math.sqrt(va + vb)
    if se == 0.0:  # every seed gave the same value on both sides: no interval to judge by
        return Difference(delta, None, None, None, NO_SPREAD)
    denom = sum(v * v / d for v, d in ((va, a.dof), (vb, b.dof)) if not math.isinf(d))
    df = (va + vb) ** 2 / denom if denom > 0 else math.inf
    half = t_quantile(0.5 + level / 2.0, df) * se
    low, high = delta - half, delta + half
    return Difference(delta, low, high, df, BEYOND if low > 0 or high < 0 else WITHIN)


# --------------------------------------------------------------------------- cells
def value_cell(s: Summary, digits: int = 1, planned: int | None = None) -> str:
    """'71.0 ± 0.3 (n=3)', '71.0 (n=1)'; ', of 3 planned' when seeds are missing."""
    of = f" of {planned} planned" if planned is not None and planned > s.n else ""
    spread = f" ± {s.std:.{digits}f}" if s.std is not None else ""
    return f"{s.mean:.{digits}f}{spread} (n={s.n}{of})"


def difference_cell(d: Difference, digits: int = 1) -> str:
    """'+1.2 [+0.4, +2.0] beyond noise', or '+1.2 (one seed, no noise estimate)'."""
    delta = f"{d.delta:+.{digits}f}"
    if d.low is None or d.high is None:
        return f"{delta} ({d.verdict})"
    return f"{delta} [{d.low:+.{digits}f}, {d.high:+.{digits}f}] {d.verdict}"
