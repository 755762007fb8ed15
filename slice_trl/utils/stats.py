"""Small-sample statistics of paired differences, in pure Python (no SciPy dependency).

For n paired differences d_1..d_n (one per seed) with mean m and sample sd s:

- the 95% confidence interval is the Student-t one, m ± t_{0.975, n-1} * s / sqrt(n);
- the minimum detectable difference (MDD) is the true mean difference delta at which the
  two-sided paired t-test at level alpha rejects with probability ``power``, computed EXACTLY:
  under delta the statistic is noncentral t with n - 1 degrees of freedom and noncentrality
  lambda = delta * sqrt(n) / sigma, and

      power(lambda) = E_W[ Phi(lambda - c W / sqrt(nu)) + Phi(-lambda - c W / sqrt(nu)) ],

  with c = t_{1 - alpha/2, nu}, nu = n - 1 and W ~ chi(nu) (the sd's sampling distribution),
  integrated numerically (Simpson) and solved for lambda by bisection; MDD = lambda * s / sqrt(n),
  i.e. sigma is taken to be the observed sd. The common shortcut (t_{1-alpha/2} + t_{power}) s /
  sqrt(n) is close for large n but not for n = 3 (see `tests/test_stats.py`).

The t quantiles come from the t CDF (regularised incomplete beta, continued fraction) by bisection.
"""

from __future__ import annotations

import functools
import math
import statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=64)  # the power search asks for the same critical value many times
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on `t_cdf`), 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p!r} must be in (0, 1).")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-13 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2.0


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def paired_t_power(ncp: float, df: int, alpha: float = 0.05, points: int = 800) -> float:
    """Power of the two-sided one-sample (paired) t-test at level ``alpha`` with ``df`` degrees of
    freedom when the statistic is noncentral t with noncentrality ``ncp`` (exact, by quadrature
    over W ~ chi(df); Simpson with ``points`` intervals, an even number)."""
    c = t_quantile(1.0 - alpha / 2.0, df)
    upper = math.sqrt(df) + 12.0  # chi(df) has no mass worth counting beyond this
    h = upper / points
    log_norm = (df / 2.0 - 1.0) * math.log(2.0) + math.lgamma(df / 2.0)
    total = 0.0
    for k in range(points + 1):
        w = k * h
        dens = math.exp((df - 1) * math.log(w) - w * w / 2.0 - log_norm) if w > 0 else (
            math.exp(-log_norm) if df == 1 else 0.0)
        s = c * w / math.sqrt(df)
        f = dens * (_phi(ncp - s) + _phi(-ncp - s))
        total += f * (1 if k in (0, points) else (4 if k % 2 else 2))
    return total * h / 3.0


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The true mean paired difference the two-sided paired t-test (level ``alpha``, ``n`` pairs)
    detects with probability ``power`` when the differences' sd is ``sd``; None for n < 2."""
    if n < 2:
        return None
    lo, hi = 0.0, 1.0
    while paired_t_power(hi, n - 1, alpha) < power:
        hi *= 2.0
    for _ in range(45):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if paired_t_power(mid, n - 1, alpha) < power else (lo, mid)
    return (lo + hi) / 2.0 * sd / math.sqrt(n)


def paired_summary(diffs: list[float], alpha: float = 0.05, power: float = 0.8) -> dict:
    """mean, sample sd, the (1 - alpha) t-interval ``ci`` = [lo, hi] and the minimum detectable
    difference ``mdd`` at ``power`` of paired differences; sd, ci and mdd are None for n < 2."""
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci": None, "mdd": None}
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci": None, "mdd": None}
    sd = statistics.stdev(diffs)
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half],
            "mdd": min_detectable_difference(sd, n, alpha, power)}
