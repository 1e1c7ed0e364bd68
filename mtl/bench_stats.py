"""Latency statistics of ``mtl bench`` and the benchmark scripts (numpy only).

Percentiles are **nearest-rank**: the q-th percentile of n latencies is the ceil(q / 100 * n)-th smallest,
a latency that was really measured (no interpolation between two samples), the definition MLPerf LoadGen's
reports use too. With n queries the p99.9 is set by the slowest n / 1000 of them, so it needs thousands
of queries: ``upper_bound_rank`` gives the rank of the order statistic that bounds the true p99.9 from
above with 95% confidence (distribution-free, from the binomial law of the count of samples below it);
from n = 2,995 on the maximum is such a bound, which is why ``mtl bench`` defaults to 3,000 queries.
MLPerf Automotive asks for at least 6,636 single-stream queries (``--queries 6636``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
STAT_KEYS = ("n", "min", "mean", "std", "p50", "p90", "p99", "p99.9", "max")
MLPERF_MIN_QUERIES = 6636       # MLPerf Automotive v0.5 SingleStream minimum query count


def percentile_key(q: float) -> str:
    """``p50``, ``p99.9``: the stats key of percentile ``q``."""
    return f"p{q:g}"


def nearest_rank(sorted_values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ascending ``sorted_values``: the ceil(q / 100 * n)-th
    smallest value (nearest rank)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(round(q / 100.0 * n, 9)))       # round: 99.9 / 100 * 1000 is 999.0000000000001
    return float(sorted_values[min(rank, n) - 1])


def stats(values: Sequence[float] | np.ndarray, ndigits: int = 4) -> dict:
    """n, min, mean, std (population), p50, p90, p99, p99.9 (nearest rank) and max of ``values``."""
    a = np.sort(np.asarray(values, np.float64))
    out: dict = {"n": int(a.size)}
    if not a.size:
        return out
    out.update(min=float(a[0]), mean=float(a.mean()), std=float(a.std()))
    out.update({percentile_key(q): nearest_rank(a, q) for q in PERCENTILES})
    out["max"] = float(a[-1])
    return {k: (round(v, ndigits) if isinstance(v, float) else v) for k, v in out.items()}


def _log_binom_cdf(n: int, p: float) -> np.ndarray:
    """P(B <= k) for B ~ Binomial(n, p), k = 0..n (log-space pmf, summed)."""
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    k = np.arange(n + 1)
    log_pmf = log_fact[n] - log_fact[k] - log_fact[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    return np.cumsum(np.exp(log_pmf))


def upper_bound_rank(n: int, q: float = 99.9, confidence: float = 0.95) -> int | None:
    """The smallest rank u such that the u-th smallest of n samples is >= the true q-th percentile with
    probability >= ``confidence``, or None when even the maximum is not (n too small).

    The u-th order statistic is below the percentile only if at most u - 1 samples are at or below it, and
    the number of samples at or below it is Binomial(n, q / 100): u = 1 + the smallest k with
    P(B <= k) >= confidence."""
    if n < 1:
        return None
    cdf = _log_binom_cdf(n, q / 100.0)
    k = int(np.searchsorted(cdf, confidence - 1e-12))
    return k + 1 if k + 1 <= n else None


def latency_stats(values: Sequence[float] | np.ndarray, ndigits: int = 4) -> dict:
    """``stats`` plus ``p99.9_upper95``: the 95% upper confidence bound on the p99.9 (the order statistic of
    ``upper_bound_rank``; None when there are too few values for one)."""
    out = stats(values, ndigits)
    if out["n"]:
        u = upper_bound_rank(out["n"])
        out["p99.9_upper95"] = None if u is None else round(float(np.sort(np.asarray(values))[u - 1]), ndigits)
    return out


def linear_growth(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Least-squares line ys = intercept + slope * xs and the end-to-end ratio ys[-1] / ys[0] (the
    "measured growth" lines of the scaling benchmarks)."""
    x, y = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    slope, intercept = np.polyfit(x, y, 1) if len(x) >= 2 else (0.0, float(y[0]) if len(y) else 0.0)
    return {"slope": float(slope), "intercept": float(intercept),
            "ratio_last_first": float(y[-1] / y[0]) if len(y) and y[0] else None}


__all__ = ["MLPERF_MIN_QUERIES", "PERCENTILES", "STAT_KEYS", "latency_stats", "linear_growth", "nearest_rank",
           "percentile_key", "stats", "upper_bound_rank"]
