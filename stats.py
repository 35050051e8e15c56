"""95% intervals for the evaluation: scipy's implementations, combined as the cited papers say.

- one accuracy (k of n seeds): Wilson score interval (scipy.stats.binomtest).
- token minus baseline on the same seeds: Newcombe's square-and-add interval for paired proportions
  (Newcombe 1998, Statistics in Medicine 17:2635, method 10; Fagerland, Lydersen & Laake 2017, ch. 8),
  built from the two Wilson intervals and the correlation of the paired outcomes. Chosen over a paired
  bootstrap: it is deterministic, it has a published reference value (tests/test_stats.py), and it stays
  honest where the bootstrap collapses (10/10 vs 10/10 gives [-28, +28] points, not [0, 0]; n = 1 works).
- a mean over classes or seeds: Student's t interval (scipy.stats.ttest_1samp).
"""

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def paired_gain(token_correct: list[bool], baseline_correct: list[bool]) -> tuple[float, float, float]:
    """(gain, low, high) of accuracy(token) - accuracy(baseline), the two judged on the same seeds."""
    t, b = np.asarray(token_correct, bool), np.asarray(baseline_correct, bool)
    if len(t) != len(b) or not len(t):
        raise ValueError(f"paired outcomes need the same, non-zero length: {len(t)} vs {len(b)}")
    n = len(t)
    both, only_t, only_b = int(np.sum(t & b)), int(np.sum(t & ~b)), int(np.sum(~t & b))
    neither = n - both - only_t - only_b
    p1, p2 = t.mean(), b.mean()
    (l1, u1), (l2, u2) = wilson(both + only_t, n), wilson(both + only_b, n)
    # Correlation of the paired outcomes (phi), with Newcombe's continuity correction; 0 when a margin is empty.
    margins = (both + only_t) * (only_b + neither) * (both + only_b) * (only_t + neither)
    a = both * neither - only_t * only_b
    phi = 0.0 if margins == 0 else (a - n / 2 if a > n / 2 else min(a, 0)) / math.sqrt(margins)

    def half(x: float, y: float) -> float:  # square-and-add with correlation; >= (x - y)^2 >= 0 up to rounding
        return math.sqrt(max(x * x + y * y - 2 * phi * x * y, 0.0))

    gain = float(p1 - p2)
    return gain, gain - half(p1 - l1, u2 - p2), gain + half(u1 - p1, p2 - l2)


def mean_interval(values) -> tuple[float, float | None, float | None]:
    """(mean, low, high): Student's t interval; no interval (None) from one value, a point from equal values."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None
    if np.all(v == v[0]):  # zero spread: scipy would warn about precision; the interval is the point
        return mean, mean, mean
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(confidence_level=CONFIDENCE)
    return mean, float(ci.low), float(ci.high)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [n, d] (n >= 2 each)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    cov = [np.atleast_2d(np.cov(x, rowvar=False)) for x in (a, b)]
    return frechet_gaussians(a.mean(0), cov[0], b.mean(0), cov[1])


def frechet_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the matrix root by scipy.linalg.sqrtm."""
    import warnings

    from scipy.linalg import LinAlgWarning, sqrtm

    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    with warnings.catch_warnings():  # fewer samples than dimensions: singular S1 S2, handled below
        warnings.simplefilter("ignore", LinAlgWarning)
        root = sqrtm(s1 @ s2)
        if not np.all(np.isfinite(root)):  # a singular product can defeat sqrtm: nudge both off singularity
            offset = np.eye(len(s1)) * 1e-6 * max(np.trace(s1), np.trace(s2), 1e-12) / len(s1)
            root = sqrtm((s1 + offset) @ (s2 + offset))
    # The exact root of S1 S2 (a product of PSD matrices) has real eigenvalues: imaginary parts are rounding.
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(root))
    return max(float(value), 0.0)  # rounding can dip just below 0 for identical sets
