"""Rank and noise statistics: the one Kendall tau of the project and what is built on it.

- ``kendall_tau`` / ``kendall_tau_pairs``: Kendall's tau-b (ties handled) over all pairs, or over
  given index pairs (the latency validation's "pairs beyond the noise").
- ``bootstrap_indices``, ``bootstrap_taus``, ``percentile_ci``: percentile bootstrap CIs over items;
  the same resamples can be shared by two statistics for a paired difference.
- ``permutation_p``: permutation p-values of a tau (two-sided and one-sided).
- ``rank_stats``: tau with its bootstrap CI and permutation p-values in one dict.
- ``seed_noise_verdict``: two models compared over the same seeds: a win or a loss only when the
  mean paired difference exceeds the larger of the two seed standard deviations.
- ``cv_pct``, ``geomean``.

Seeded: the same arguments give the same numbers (numpy's default_rng)."""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

import numpy as np


# --- Kendall's tau ------------------------------------------------------------------------
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties handled) over all pairs, O(n^2); NaN when undefined (fewer than 2 items,
    or every x or every y equal)."""
    n = len(x)
    if n < 2:
        return float("nan")
    return kendall_tau_pairs(x, y, [(i, j) for i in range(n) for j in range(i + 1, n)])


def kendall_tau_pairs(x: Sequence[float], y: Sequence[float], pairs: Sequence[tuple]) -> float:
    """Kendall's tau-b over the given index pairs only; NaN when no pair orders both."""
    conc = disc = tx = ty = 0
    for i, j in pairs:
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    den = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / den if den else float("nan")


# --- bootstrap ----------------------------------------------------------------------------
def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) item indices drawn with replacement, seeded: share them between two statistics
    to bootstrap their difference."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_taus(x: Sequence[float], y: Sequence[float], idx: np.ndarray) -> tuple[list, int]:
    """(tau of each resample, how many were undefined). A resample whose tau is undefined (all its
    x or all its y equal) counts as tau 0: it carries no ranking. Dropping it instead would keep
    only the resamples that hold the few distinct items and bias the CI up."""
    taus = [kendall_tau([x[i] for i in b], [y[i] for i in b]) for b in idx]
    undefined = sum(not math.isfinite(t) for t in taus)
    return [t if math.isfinite(t) else 0.0 for t in taus], undefined


def percentile_ci(xs: Sequence[float], ci: float = 0.95) -> tuple[float, float]:
    """The central `ci` percentile interval of the finite values of xs; (NaN, NaN) when none."""
    a = np.asarray([x for x in xs if math.isfinite(x)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(a, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


# --- permutation test -----------------------------------------------------------------------
def permutation_p(
    x: Sequence[float], y: Sequence[float], tau: float, n_perm: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """(two-sided, greater) permutation p-values of `tau` = kendall_tau(x, y): the share of
    permutations of y whose |tau| (two-sided) or tau (greater) is at least as large, each
    (1 + hits) / (1 + n_perm). Permutations with an undefined tau count as no hit."""
    rng = np.random.default_rng(seed)
    two = greater = 0
    n = len(x)
    for _ in range(n_perm):
        p = rng.permutation(n)
        t = kendall_tau(x, [y[i] for i in p])
        if not math.isfinite(t):
            continue
        two += abs(t) >= abs(tau) - 1e-12
        greater += t >= tau - 1e-12
    return (1 + two) / (1 + n_perm), (1 + greater) / (1 + n_perm)


def rank_stats(
    score: Sequence[float],
    target: Sequence[float],
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    ci: float = 0.95,
    boot_idx: Optional[np.ndarray] = None,
) -> dict:
    """Kendall tau-b of (score, target) (positive: a higher score goes with a higher target), a
    percentile bootstrap CI over the items (``bootstrap_taus``: an undefined resample counts as tau 0,
    and how many there were is reported) and permutation p-values (``permutation_p``, seeded with
    seed + 1). `boot_idx` shares resamples with another call; "_boots" holds this call's resampled
    taus for a paired difference. When tau itself is undefined (every score or every target equal)
    its CI and p-values are NaN and "undefined" says why."""
    x, y = [float(v) for v in score], [float(v) for v in target]
    if len(x) != len(y):
        raise ValueError(f"score has {len(x)} items, target {len(y)}: they must pair up")
    n = len(x)
    if n < 3:
        raise ValueError(f"{n} items: Kendall tau with a CI needs at least 3")
    tau = kendall_tau(x, y)
    if boot_idx is None:
        boot_idx = bootstrap_indices(n, n_boot, seed)
    if not math.isfinite(tau):  # every score (or every target) is the same: no ranking to test
        nan = float("nan")
        return {
            "tau": nan,
            "ci": ci,
            "ci_low": nan,
            "ci_high": nan,
            "boot_undefined": len(boot_idx),
            "boot": len(boot_idx),
            "p_two_sided": nan,
            "p_greater": nan,
            "perm": 0,
            "n": n,
            "_boots": [nan] * len(boot_idx),
            "undefined": "all scores or all targets are equal",
        }
    boots, undefined = bootstrap_taus(x, y, boot_idx)
    lo, hi = percentile_ci(boots, ci)
    p_two, p_greater = permutation_p(x, y, tau, n_perm, seed + 1)
    return {
        "tau": tau,
        "ci": ci,
        "ci_low": lo,
        "ci_high": hi,
        "boot_undefined": undefined,
        "boot": len(boots),
        "p_two_sided": p_two,
        "p_greater": p_greater,
        "perm": n_perm,
        "n": n,
        "_boots": boots,
    }


# --- over seeds -------------------------------------------------------------------------------
def seed_noise_verdict(a: Sequence[float], b: Sequence[float]) -> dict:
    """Model a against model b, each scored with the same seeds (a[k] and b[k] share seed k): the
    mean paired difference a - b, the differences, the seed noise (the larger of the two sample
    standard deviations; 0 with one seed) and the verdict: "win" / "loss" only when the mean
    difference exceeds the noise, else "tie (within seed noise)"."""
    if len(a) != len(b) or not a:
        raise ValueError(f"{len(a)} and {len(b)} scores: one per seed for both models")
    diffs = [x - y for x, y in zip(a, b)]
    d = statistics.fmean(diffs)
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    noise = max(sd(a), sd(b))
    verdict = "win" if d > noise else ("loss" if -d > noise else "tie (within seed noise)")
    return {"mean_diff": d, "paired_diffs": diffs, "seed_noise": noise, "verdict": verdict}


# --- spread and means ----------------------------------------------------------------------------
def cv_pct(xs: Sequence[float]) -> float:
    """Sample coefficient of variation (n - 1), in %."""
    return 100 * statistics.stdev(xs) / statistics.mean(xs)


def geomean(xs: Sequence[float]) -> float:
    """Geometric mean of positive finite values (a ValueError names the values otherwise)."""
    xs = [float(x) for x in xs]
    if not xs or any(not (x > 0 and math.isfinite(x)) for x in xs):
        raise ValueError(f"geomean needs positive finite values, got {xs}")
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


__all__ = [
    "kendall_tau",
    "kendall_tau_pairs",
    "bootstrap_indices",
    "bootstrap_taus",
    "percentile_ci",
    "permutation_p",
    "rank_stats",
    "seed_noise_verdict",
    "cv_pct",
    "geomean",
]
