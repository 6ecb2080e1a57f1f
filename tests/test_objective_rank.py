"""experiments/objective_rank.py without fine-tuning: its statistics on known inputs (sign convention:
a LOWER held-out loss with a HIGHER accuracy is a positive tau) and on a recorded run, and its subnet
chooser."""

import json

import pytest

from autodistil.space import Range, SearchSpace, SubnetConfig
from experiments import objective_rank as orank
from experiments.common import RESULTS

# a fixed shuffle of 0..11 whose Kendall tau against 0..11 is exactly 0
NO_ORDER = [1, 9, 8, 5, 10, 2, 3, 7, 4, 0, 11, 6]


def test_perfect_ranking_tau_one_ci_excludes_zero():
    acc = [0.60 + 0.02 * i for i in range(10)]
    loss = [
        1.0 - 0.05 * i for i in range(10)
    ]  # lower loss <-> higher accuracy: the objective ranks perfectly
    macs = [10.0 - i for i in range(10)]  # bigger <-> worse here: the trivial predictor is reversed
    st = orank.objective_rank_stats(loss, macs, acc, n_boot=2000, n_perm=2000, seed=0)
    o = st["objective"]
    assert o["tau"] == pytest.approx(1.0)
    assert o["ci_low"] > 0 and o["ci_high"] == pytest.approx(1.0)
    assert o["p_greater"] < 0.01 and o["p_two_sided"] < 0.01
    assert st["macs"]["tau"] == pytest.approx(-1.0)
    assert st["difference"]["tau"] == pytest.approx(2.0) and st["difference"]["ci_low"] > 0
    assert st["loss_vs_macs_tau"] == pytest.approx(-1.0)
    assert o["boot_undefined"] < 100 and o["boot"] == 2000 and o["n"] == 10
    assert "verdict: the objective ranks subnets better than chance" in orank.verdict(st)[-1]
    assert "better than MACs" in orank.verdict(st)[-1]


def test_reversed_ranking_tau_minus_one():
    acc = [0.60 + 0.02 * i for i in range(10)]
    loss = [0.5 + 0.05 * i for i in range(10)]  # higher loss <-> higher accuracy: the objective is backwards
    macs = list(range(10))
    st = orank.objective_rank_stats(loss, macs, acc, n_boot=2000, n_perm=2000, seed=0)
    assert st["objective"]["tau"] == pytest.approx(-1.0)
    assert st["objective"]["ci_high"] < 0
    assert st["objective"]["p_greater"] > 0.99  # tau > 0 is not supported at all
    assert st["macs"]["tau"] == pytest.approx(1.0)
    assert "WORSE than chance" in orank.verdict(st)[-1]


def test_unrelated_ranking_ci_covers_zero():
    acc = [0.6 + 0.01 * v for v in NO_ORDER]
    loss = [1.0 - 0.01 * i for i in range(12)]
    st = orank.objective_rank_stats(loss, list(range(12)), acc, n_boot=2000, n_perm=2000, seed=0)
    o = st["objective"]
    assert o["tau"] == pytest.approx(0.0, abs=1e-12)
    assert o["ci_low"] < 0 < o["ci_high"]
    assert o["p_two_sided"] > 0.5
    assert "no evidence" in orank.verdict(st)[-1]


def test_stats_are_seeded_and_check_lengths():
    acc = [0.6 + 0.01 * v for v in NO_ORDER]
    loss = [1.0 - 0.01 * i for i in range(12)]
    a = orank.objective_rank_stats(loss, list(range(12)), acc, n_boot=300, n_perm=300, seed=3)
    b = orank.objective_rank_stats(loss, list(range(12)), acc, n_boot=300, n_perm=300, seed=3)
    assert a == b
    with pytest.raises(ValueError, match="one value per subnet"):
        orank.objective_rank_stats(loss[:-1], list(range(12)), acc)


def _space():
    return SearchSpace("u", Range(1, 4, 1), Range(32, 96, 16), Range(2.0, 3.0, 0.5), Range(2, 5, 1), 16)


def _macs(_name, c: SubnetConfig) -> float:
    return c.layers * (4 * c.hidden * c.heads * 16 + 2 * c.hidden * c.ffn)


@pytest.mark.parametrize("pool", [50, 1000])  # a random pool, and the whole space (240 subnets)
def test_chooser_distinct_inside_space_and_spread(pool):
    sp = _space()
    chosen, rows = orank.choose_subnets([sp], 12, _macs, pool=pool, seed=1)
    assert len(rows) == min(pool, len(sp))
    cfgs = [r["cfg"] for r in chosen]
    assert len(cfgs) == 12 and len(set(cfgs)) == 12
    assert all(c in sp for c in cfgs) and all(r["space"] == "u" for r in chosen)
    keys = [r["key"] for r in chosen]
    assert keys == sorted(keys)
    pool_keys = sorted(r["key"] for r in rows)
    assert keys[0] == pool_keys[0] and keys[-1] == pool_keys[-1]  # both ends of the pool
    ranks = [r["rank"] for r in chosen]  # evenly spaced quantiles
    gaps = [b - a for a, b in zip(ranks, ranks[1:])]
    assert max(gaps) - min(gaps) <= 1
    again, _ = orank.choose_subnets([sp], 12, _macs, pool=pool, seed=1)
    assert [r["cfg"] for r in again] == cfgs


def test_chooser_spans_several_spaces_and_refuses_too_few():
    a = SearchSpace(
        "a", Range(1, 2, 1), Range(32, 48, 16), Range(2.0, 2.0, 1.0), Range(2, 2, 1), 16
    )  # 4 subnets
    b = SearchSpace(
        "b", Range(3, 4, 1), Range(64, 80, 16), Range(2.0, 2.0, 1.0), Range(2, 3, 1), 16
    )  # 8 subnets
    chosen, rows = orank.choose_subnets([a, b], 12, _macs, pool=200)
    assert len(rows) == 12 and len({(r["space"], r["cfg"]) for r in chosen}) == 12
    assert all(r["cfg"] in (a if r["space"] == "a" else b) for r in chosen)
    with pytest.raises(ValueError, match="fewer than the 13"):
        orank.choose_subnets([a, b], 13, _macs)


def test_config_and_resume_guard(tmp_path):
    with pytest.raises(ValueError, match="at least 10 subnets"):
        orank.BenchConfig(supernet="x", n=9)
    with pytest.raises(ValueError, match="stratify"):
        orank.BenchConfig(supernet="x", stratify="params")
    cfg = orank.BenchConfig(supernet="x", max_train_examples=256)
    ident = {"supernet": "/a/sn", "supernet_sha256": "ab", "heldout_blocks": 8}
    want = {"identity": ident, "recipe": cfg.recipe()}
    rec = json.loads(json.dumps(want))  # what a result file holds after a round trip
    rec["identity"]["supernet"] = "/moved/sn"  # same weights elsewhere: reusable
    orank._check_resumed(tmp_path / "r.json", rec, want)
    rec["recipe"]["max_train_examples"] = 512
    with pytest.raises(ValueError, match="other settings"):
        orank._check_resumed(tmp_path / "r.json", rec, want)


def test_equal_scores_give_no_tau_and_no_p_value():
    """Every subnet at the majority-class accuracy (too short a fine-tuning): nothing is ranked, so
    no p-value may claim significance (a permutation test that skips undefined taus would)."""
    loss = [1.0 - 0.01 * i for i in range(10)]
    st = orank.objective_rank_stats(loss, list(range(10)), [0.5968] * 10, n_boot=200, n_perm=200)
    for k in ("objective", "macs"):
        assert st[k]["tau"] != st[k]["tau"]  # NaN
        assert st[k]["p_two_sided"] != st[k]["p_two_sided"] and st[k]["p_greater"] != st[k]["p_greater"]
    assert "undefined" in orank.verdict(st)[-1]
    safe = orank.json_safe(st)
    assert safe["objective"]["tau"] is None and safe["objective"]["p_two_sided"] is None
    json.dumps(safe, allow_nan=False)


def test_one_distinct_score_is_no_evidence():
    """9 subnets at one (majority-class) score, the lowest-loss one above it: tau is positive
    (0.447) but rests on one subnet. A bootstrap that drops the resamples missing that subnet
    (their tau is undefined) gives a CI above 0, [0.46, 0.76]; counted as tau 0, the CI reaches 0,
    the permutation p is 0.2, and the verdict must not claim a ranking."""
    loss = [0.6625] + [0.70 + 0.005 * i for i in range(9)]
    acc = [0.5931] + [0.5813] * 9
    st = orank.objective_rank_stats(loss, list(range(10, 0, -1)), acc, n_boot=2000, n_perm=2000, seed=0)
    o = st["objective"]
    assert o["tau"] == pytest.approx(0.4472, abs=1e-3)
    assert o["ci_low"] <= 0 <= o["ci_high"] and o["ci_low"] <= o["tau"] <= o["ci_high"]
    assert 300 < o["boot_undefined"] < 1100  # ~ 0.9**10 = 35 % of the resamples miss that subnet
    assert o["p_two_sided"] > 0.1
    assert "no evidence" in orank.verdict(st)[-1]
    assert "9 of 10 subnets have the same score 0.5813" in orank.ties_note(acc)
    assert orank.ties_note([0.5, 0.6, 0.7]) is None


def test_subnets_from_an_earlier_run(tmp_path):
    """--subnets-from: the same architectures (space, cfg, in the earlier run's order) under another
    supernet; subnets outside this supernet's spaces, repeated ones and too few are refused."""
    a = SearchSpace(
        "a", Range(1, 4, 1), Range(32, 64, 16), Range(2.0, 3.0, 1.0), Range(2, 3, 1), 16
    )  # 48 subnets
    chosen, _ = orank.choose_subnets([a], 10, _macs, pool=30, seed=3)
    rows = [
        {"name": f"n{i}", "space": r["space"], **r["cfg"].as_dict(), "score": 0.5}
        for i, r in enumerate(chosen)
    ]
    p = tmp_path / "objective_rank.json"
    p.write_text(json.dumps({"subnets": rows}))
    got = orank.subnets_from(p, [a])
    assert [(r["space"], r["cfg"], r["rank"]) for r in got] == [
        (r["space"], r["cfg"], i) for i, r in enumerate(chosen)
    ]
    b = SearchSpace("b", Range(1, 2, 1), Range(32, 48, 16), Range(2.0, 3.0, 1.0), Range(2, 3, 1), 16)
    with pytest.raises(ValueError, match="from space 'a'"):
        orank.subnets_from(p, [b])
    small = SearchSpace("a", Range(1, 2, 1), Range(32, 64, 16), Range(2.0, 3.0, 1.0), Range(2, 3, 1), 16)
    assert any(r["cfg"].layers > 2 for r in chosen)  # the largest-MACs quantile has 4 layers
    with pytest.raises(ValueError, match="outside"):
        orank.subnets_from(p, [small])
    p.write_text(json.dumps({"subnets": rows[:9]}))
    with pytest.raises(ValueError, match="at least 10"):
        orank.subnets_from(p, [a])
    p.write_text(json.dumps({"subnets": rows + rows[:1]}))
    with pytest.raises(ValueError, match="twice"):
        orank.subnets_from(p, [a])
    with pytest.raises(FileNotFoundError, match="no such file"):
        orank.subnets_from(tmp_path / "none.json", [a])


def test_compare_runs_pairs_subnets_and_sees_a_better_ranker(tmp_path):
    """--compare: run b's loss orders its scores, run a's does not; the paired tau difference is
    positive with a CI above 0, scores b - a are paired per subnet, and a different subnet set is
    refused."""
    cfgs = [
        SubnetConfig(layers=1 + i % 4, hidden=32 + 16 * (i % 3), ffn_ratio=2.0, heads=2 + i % 2)
        for i in range(12)
    ]
    assert len(set(cfgs)) == 12
    sc = [0.60 + 0.01 * i for i in range(12)]

    def run(losses, scores, name):
        return {
            "identity": {"supernet": name},
            "objective_weights": {},
            "seed_noise_sd": 0.002,
            "subnets": [
                {"space": "u", **c.as_dict(), "heldout_loss": l, "score": s}
                for c, l, s in zip(cfgs, losses, scores)
            ],
        }

    a = run([0.5 + 0.01 * v for v in NO_ORDER], sc, "A")  # tau 0: the loss does not order the scores
    b = run(
        [1.0 - 0.01 * i for i in range(12)], [s + 0.01 for s in sc], "B"
    )  # tau 1, every score 1 point higher
    b["subnets"].reverse()  # matched by architecture, not position
    c = orank.compare_runs(a, b, n_boot=300)
    assert c["a"]["tau"] == pytest.approx(0.0) and c["b"]["tau"] == pytest.approx(1.0)
    assert c["tau_difference"]["tau"] == pytest.approx(1.0) and c["tau_difference"]["ci_low"] > 0
    m = c["mean_score_difference"]
    assert (
        m["diff"] == pytest.approx(0.01)
        and m["ci_low"] == pytest.approx(0.01)
        and m["subnets_b_higher"] == 12
    )
    # run a's CI is the one its own run reports (same seed and resamples, its own subnet order)
    own = orank.objective_rank_stats(
        [r["heldout_loss"] for r in a["subnets"]],
        [0.0] * 12,
        [r["score"] for r in a["subnets"]],
        n_boot=300,
        n_perm=10,
    )["objective"]
    assert (c["a"]["ci_low"], c["a"]["ci_high"]) == (own["ci_low"], own["ci_high"])
    flat = run([1.0 - 0.01 * i for i in range(12)], [0.5968] * 12, "F")  # every score equal: tau undefined
    cf = orank.compare_runs(a, flat, n_boot=100)
    assert (
        cf["b"]["ci_low"] != cf["b"]["ci_low"]
        and cf["tau_difference"]["ci_high"] != cf["tau_difference"]["ci_high"]
    )
    for field, val, msg in (
        ("recipe", {"lr": 1e-4}, "differ in recipe"),
        ("config", {"seeds": 1, "seed": 0}, "seeds"),
        ("identity", {"supernet": "A", "supernet_sha256": "x"}, "same supernet weights"),
    ):
        a2, b2 = dict(a), dict(b)
        if field == "identity":
            a2[field] = b2[field] = val
        else:
            b2[field] = val
        with pytest.raises(ValueError, match=msg):
            orank.compare_runs(a2, b2)
    b["subnets"][0]["hidden"] = 96
    with pytest.raises(ValueError, match="different subnets"):
        orank.compare_runs(a, b)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(run([1.0 - 0.01 * i for i in range(12)], sc, "B")))
    assert orank.main(["--compare", str(pa), str(pb), "--out", str(tmp_path / "cmp"), "--boot", "200"]) == 0
    got = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert got["b"]["tau"] == pytest.approx(1.0) and got["runs"] == [str(pa), str(pb)]


def test_recorded_statistics_are_reproduced():
    """The statistics of a committed run, recomputed from its subnets' losses, MACs and mean scores
    with its own seed and resample counts, are the ones it recorded."""
    rec = json.loads((RESULTS / "2026-11-27_objective_rank_main_tiny" / "objective_rank.json").read_text())
    c, rows = rec["config"], rec["subnets"]
    st = orank.objective_rank_stats(
        [r["heldout_loss"] for r in rows],
        [r["gmacs"] for r in rows],
        [r["score"] for r in rows],
        c["boot"],
        c["perm"],
        c["seed"],
    )
    for part in ("objective", "macs"):
        for k in ("tau", "ci_low", "ci_high", "p_two_sided", "p_greater"):
            assert st[part][k] == pytest.approx(rec["stats"][part][k], abs=1e-12), (part, k)
    for k in ("tau", "ci_low", "ci_high"):
        assert st["difference"][k] == pytest.approx(rec["stats"]["difference"][k], abs=1e-12)
    assert orank.verdict(st) == rec["verdict"]
