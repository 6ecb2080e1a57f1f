"""autodistil.stats (Kendall tau, bootstrap, permutation, seed noise) and autodistil.machine (device
facts)."""

import math

import pytest

from autodistil import stats
from autodistil.machine import cpu_id, device_info, loadavg


def test_kendall_tau_b_with_ties_matches_scipy():
    scipy = pytest.importorskip("scipy.stats")
    x = [1, 2, 2, 3, 5, 4, 4, 7]
    y = [2, 1, 3, 3, 6, 4, 5, 5]
    assert stats.kendall_tau(x, y) == pytest.approx(scipy.kendalltau(x, y).statistic)
    assert stats.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(stats.kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(stats.kendall_tau([1], [2]))
    assert stats.kendall_tau_pairs([2, 1, 3], [10.0, 10.1, 20.0], [(0, 2), (1, 2)]) == 1.0


def test_latency_validation_uses_the_same_tau():
    from autodistil.latency import validate

    assert validate.kendall_tau is stats.kendall_tau and validate.kendall_tau_pairs is stats.kendall_tau_pairs


def test_bootstrap_counts_undefined_resamples_as_no_ranking():
    idx = stats.bootstrap_indices(4, 50, seed=1)
    assert idx.shape == (50, 4) and (stats.bootstrap_indices(4, 50, seed=1) == idx).all()
    taus, undefined = stats.bootstrap_taus([1, 2, 3, 4], [1, 1, 1, 2], idx)
    assert len(taus) == 50 and all(math.isfinite(t) for t in taus)
    assert undefined == sum(t == 0.0 for t in taus) > 0  # resamples without the one distinct target


def test_percentile_ci_ignores_nan_and_says_when_empty():
    lo, hi = stats.percentile_ci([float("nan")] + list(range(101)), 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))
    assert all(math.isnan(v) for v in stats.percentile_ci([float("nan")]))


def test_rank_stats_perfect_and_undefined():
    r = stats.rank_stats(list(range(10)), [0.1 * i for i in range(10)], n_boot=500, n_perm=500, seed=0)
    assert r["tau"] == 1.0 and r["ci_low"] > 0 and r["p_two_sided"] < 0.01 and len(r["_boots"]) == 500
    u = stats.rank_stats(list(range(5)), [0.5] * 5, n_boot=20, n_perm=20)
    assert math.isnan(u["tau"]) and math.isnan(u["p_two_sided"]) and "undefined" in u
    with pytest.raises(ValueError, match="pair up"):
        stats.rank_stats([1, 2, 3], [1, 2])


def test_permutation_p_is_seeded_and_one_sided_below_two_sided():
    x, y = list(range(8)), [0, 2, 1, 3, 5, 4, 7, 6]
    t = stats.kendall_tau(x, y)
    two, greater = stats.permutation_p(x, y, t, 400, seed=5)
    assert (two, greater) == stats.permutation_p(x, y, t, 400, seed=5)
    assert greater <= two < 0.05


@pytest.mark.parametrize(
    "a,b,verdict",
    [
        ([0.80, 0.81, 0.79], [0.70, 0.72, 0.71], "win"),
        ([0.70, 0.72, 0.71], [0.80, 0.81, 0.79], "loss"),
        (
            [0.78, 0.78, 0.78],
            [0.75, 0.79, 0.77],
            "tie (within seed noise)",
        ),  # +0.01 against a seed sd of 0.02
    ],
)
def test_seed_noise_verdict(a, b, verdict):
    v = stats.seed_noise_verdict(a, b)
    assert v["verdict"] == verdict
    assert v["paired_diffs"] == pytest.approx([x - y for x, y in zip(a, b)])
    with pytest.raises(ValueError, match="one per seed"):
        stats.seed_noise_verdict(a, b[:2])


def test_cv_and_geomean():
    assert stats.cv_pct([9.0, 10.0, 11.0]) == pytest.approx(10.0)
    assert stats.geomean([1.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive finite"):
        stats.geomean([1.0, 0.0])


def test_machine_facts_need_no_gpu():
    info = device_info("cpu")
    assert info["device"] == "cpu" and info["device_name"] and info["driver"] == "n/a"
    assert {"torch", "cuda", "triton", "threads", "python"} <= set(info)
    assert loadavg() is None or len(loadavg()) == 3
    arm = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    assert cpu_id(arm) == "arm implementer 0x41 part 0xd0c"
