import bisect
import dataclasses
import math
import random
import statistics

import pytest

from autodistil.latency.predict import LatencyTable
from autodistil.latency.profile import (
    ModelSpec,
    ProfileSettings,
    Timing,
    build_table,
    machine_key,
    measure,
    percentile,
    split_half_noise,
)
from autodistil.latency.validate import (
    error_stats,
    kendall_tau,
    kendall_tau_pairs,
    measure_models,
    random_students,
    separable_pairs,
    validate_table,
    validation_report,
)
from autodistil.space import Range, SearchSpace, SubnetConfig

HEAD_DIM = 32


def true_ms(spec: ModelSpec) -> float:
    """The synthetic device's latency (ms): base + L x layer, multilinear in (h, a, f); the
    BertModel class costs more per call and per layer."""
    h, a, f, L = spec.hidden, spec.heads, spec.ffn, spec.layers
    bert = spec.cls == "bert" or (spec.cls == "auto" and a * HEAD_DIM == h)
    base = 0.4 + 0.004 * h + (0.3 if bert else 0.0)
    layer = 0.15 + 0.00004 * h * a * HEAD_DIM / 8 + 0.000012 * h * f + 0.05 * a + (0.05 if bert else 0.0)
    return base + (L * layer if L else 0.0)


class SyntheticDevice:
    """A device on a virtual clock (no sleeps): each run advances the clock by the true latency x the
    machine's speed factor at that time x seeded noise (lognormal, plus rare 3x stalls)."""

    def __init__(self, seed=0, noise=0.04, stall_p=0.01, drift=None):
        self.t = 0.0
        self.rng = random.Random(seed)
        self.noise, self.stall_p = noise, stall_p
        self.drift = drift or (lambda t: 1.0)
        self.clock = lambda: self.t

    def key(self):
        return {
            "device_type": "cpu",
            "device_name": "synthetic",
            "torch": "x",
            "runtime": "torch",
            "dtype": "fp32",
            "batch": 1,
            "seq_len": 128,
            "threads": 1,
        }

    def prepare(self):
        return {"threads": 1, "affinity": [0], "loadavg": None}

    def runner(self, spec):
        ms = true_ms(spec)

        def run():
            x = ms * self.drift(self.t) * math.exp(self.rng.gauss(0, self.noise))
            if self.rng.random() < self.stall_p:
                x *= 3
            self.t += x / 1e3

        return run

    def time_one(self, run):
        t0 = self.t
        run()
        return (self.t - t0) * 1e3


@pytest.fixture(scope="module")
def synth_space():
    # heads x 32 == hidden at (64, 2), (96, 3), (128, 4): BertModel-shaped students inside the space
    return SearchSpace(
        "synth", Range(1, 6, 1), Range(64, 128, 16), Range(2.0, 4.0, 0.5), Range(2, 5, 1), HEAD_DIM
    )


SYN = ProfileSettings(rounds=4, round_s=0.3, warmup_s=0.02)


def _students(space, n=30, seed=5):
    return [c for _, c in random_students([space], n, seed)]


def test_synthetic_device_is_recovered_within_2_percent(synth_space):
    table = build_table([synth_space], SYN, grid=(3, 2, 2), calibrate=0, device=SyntheticDevice(seed=1))
    assert table.correction is None and any(r["kind"] == "bert" for r in table.rows)
    errs = [
        abs(table.predict(c) - true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn)))
        / true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn))
        for c in _students(synth_space)
    ]
    assert max(errs) < 0.02, max(errs)
    # the BertModel-shaped students need their own entries: the AutoDistil grid alone is off by more
    bert = [c for c in synth_space if c.heads * HEAD_DIM == c.hidden and c.layers == 6]
    assert bert and all(
        abs(table.predict(c) / true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn)) - 1) < 0.02
        for c in bert
    )


def test_anchor_normalisation_cancels_machine_drift(synth_space):
    """The machine slows down by up to 40% and recovers during profiling: every entry is divided by
    the anchor's speed at its time, so the relative latencies stay exact (2%)."""
    drift = lambda t: 1.0 + 0.2 * (1 - math.cos(2 * math.pi * t / 40.0))
    table = build_table(
        [synth_space], SYN, grid=(3, 2, 2), calibrate=0, device=SyntheticDevice(seed=2, drift=drift)
    )
    ratios = [
        table.predict(c) / true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn))
        for c in _students(synth_space)
    ]
    mid = sorted(ratios)[len(ratios) // 2]
    assert max(abs(r / mid - 1) for r in ratios) < 0.02, (min(ratios), max(ratios))
    assert table.meta["anchor"]["spread_pct"] > 20  # the drift was there, and seen


def test_noise_is_measured_by_split_halves():
    t = Timing(
        rounds=[[10.0] * 5, [12.0] * 5, [10.0] * 5, [12.0] * 5],
        raw_rounds=[[1.0]] * 4,
        stat="median",
        low_pct=10,
    )
    assert t.halves() == (10.0, 12.0) and t.noise_sd == pytest.approx(1.0)
    n = split_half_noise({"a": t})
    assert n["halves_mape_pct"] == pytest.approx(100 * 2 / 11) and n["sd_pct"] == pytest.approx(
        100 * (2 / 11) / 2
    )
    assert percentile([1, 2, 3, 4, 5], 10) == pytest.approx(1.4)
    dev = SyntheticDevice(seed=3, noise=0.0, stall_p=0.0)
    sess = measure(
        {"m": dev.runner(ModelSpec(2, 64, 2, 128))}, SYN, dev, dev.runner(ModelSpec(1, 64, 2, 128))
    )
    runs = [len(r) for r in sess.timings["m"].rounds]
    one = true_ms(ModelSpec(2, 64, 2, 128)) / 1e3
    assert len(runs) == SYN.rounds and all(
        SYN.round_s <= n * one < SYN.round_s + 2 * one for n in runs
    )  # time-based
    assert sess.noise()["sd_pct"] == pytest.approx(0.0, abs=1e-9)


def _speed_states(seed: int, hold_s: float = 0.25, sd: float = 0.15, horizon_s: float = 600.0):
    """A shared machine's speed as seen by one core: a factor that holds for a random time (mean
    `hold_s`) and then jumps to a new lognormal level, as on a shared 2-core VM (runs autocorrelated
    over ~0.2 s, round medians moving +-10 %)."""
    rng = random.Random(seed)
    edges, levels, t = [], [], 0.0
    while t < horizon_s:
        t += rng.expovariate(1 / hold_s)
        edges.append(t)
        levels.append(math.exp(rng.gauss(0, sd)))
    return lambda now: levels[min(bisect.bisect_left(edges, now), len(levels) - 1)]


def test_default_protocol_beats_few_long_rounds_on_a_machine_with_speed_states():
    """Many short interleaved rounds with a frequent anchor (the default: 12 x 0.125 s, anchor every
    4 models) against the previous default (3 x 0.5 s, anchor every 8), the same timed seconds per
    model: on a device whose speed jumps between levels every ~0.25 s, what a table stores (latency
    over the session's anchor) must move less between sessions. Reverting the defaults fails this."""
    old = ProfileSettings(rounds=3, round_s=0.5, warmup_s=0.1, anchor_every=8)
    new = ProfileSettings()
    assert new.rounds * new.round_s == pytest.approx(old.rounds * old.round_s)
    specs = [
        ModelSpec(L, h, a, f)
        for L, h, a, f in [
            (1, 64, 2, 128),
            (2, 64, 2, 192),
            (2, 96, 3, 288),
            (3, 96, 3, 384),
            (4, 112, 4, 336),
            (5, 128, 4, 512),
            (6, 128, 5, 448),
            (3, 80, 2, 240),
        ]
    ]

    def cv_across_sessions(st, sessions=8):
        ratios = {i: [] for i in range(len(specs))}
        for s in range(sessions):
            dev = SyntheticDevice(seed=100 + s, noise=0.03, stall_p=0.0, drift=_speed_states(200 + s))
            sess = measure(
                {i: dev.runner(sp) for i, sp in enumerate(specs)},
                st,
                dev,
                dev.runner(ModelSpec(2, 96, 3, 288, "autodistil")),
                seed=s,
            )
            for i, t in sess.timings.items():
                ratios[i].append(t.ms / sess.anchor["ms"])
        cv = lambda xs: statistics.pstdev(xs) / statistics.mean(xs)
        return sum(cv(v) for v in ratios.values()) / len(ratios)

    cv_old, cv_new = cv_across_sessions(old), cv_across_sessions(new)
    assert cv_new < 0.6 * cv_old, (cv_new, cv_old)


def test_validation_statistics_and_pairs_beyond_noise(synth_space):
    dev = SyntheticDevice(seed=4)
    table = build_table([synth_space], SYN, grid=(3, 2, 2), calibrate=6, device=dev)
    students = random_students([synth_space], 12, seed=9)
    res = measure_models(
        {f"{s}-{c.short()}": ModelSpec(c.layers, c.hidden, c.heads, c.ffn) for s, c in students},
        table,
        SYN,
        device=SyntheticDevice(seed=5),
    )
    rep = validation_report(table, [synth_space], students, res, dev.key())
    o = rep["overall"]
    assert o["mape_pct"] < 2.5 and o["within_5_pct"] == 100 and o["kendall_tau_beyond_noise"] > 0.95
    assert 0 < o["pairs_beyond_noise"] <= o["pairs_total"] == 66
    assert rep["machine_drift"] == pytest.approx(1.0, abs=0.03)


def test_statistics_on_known_timings():
    meas = [10.0, 20.0, 30.0, 40.0]
    pred = [10.4, 21.5, 29.0, 52.0]  # errors 4%, 7.5%, 3.3%, 30%
    st = error_stats(pred, meas)
    assert st["mape_pct"] == pytest.approx(100 * (0.04 + 0.075 + 1 / 30 + 0.3) / 4)
    assert st["within_5_pct"] == 50.0 and st["within_10_pct"] == 75.0 and st["kendall_tau"] == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    scipy = pytest.importorskip("scipy.stats")
    x, y = [1, 2, 2, 5, 3, 9], [2, 1, 4, 4, 3, 7]
    assert kendall_tau(x, y) == pytest.approx(scipy.kendalltau(x, y).statistic)
    # 10.0 and 10.1 are within 5% noise of each other; the other pairs are not
    pairs = separable_pairs([10.0, 10.1, 20.0], noise_sd_pct=5.0)
    assert pairs == [(0, 2), (1, 2)]
    assert kendall_tau_pairs([2, 1, 3], [10.0, 10.1, 20.0], pairs) == 1.0


def test_correction_is_kept_only_when_it_helps(synth_space):
    table = build_table([synth_space], SYN, grid=(2, 2, 2), calibrate=0, device=SyntheticDevice(seed=6))
    cfgs = _students(synth_space, 12)
    truth = [1.3 * table.raw(c)[0] + 0.7 for c in cfgs]  # a systematic, learnable bias
    rep = table.fit_correction(cfgs, truth)
    assert (
        rep["used"]
        and table.correction["a"] == pytest.approx(1.3)
        and table.predict(cfgs[0]) == pytest.approx(truth[0])
    )
    exact = [table.raw(c)[0] for c in cfgs]  # nothing to correct: the correction must not be kept
    assert not table.fit_correction(cfgs, exact)["used"] and table.correction is None


def test_table_round_trip_and_refusals(synth_space, tmp_path):
    table = build_table(
        [synth_space],
        dataclasses.replace(SYN, rounds=2),
        grid=(2, 2, 2),
        calibrate=0,
        device=SyntheticDevice(seed=7),
    )
    table.save(tmp_path / "t.json")
    t2 = LatencyTable.load(tmp_path / "t.json")
    c = SubnetConfig(3, 80, 2.5, 3)
    assert t2.predict(c) == table.predict(c) and t2.key == table.key
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not an autodistil latency table"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"format": "autodistil-latency-table", "version": 1}')
    with pytest.raises(ValueError, match="table version 1, this autodistil reads version 2; profile again"):
        LatencyTable.load(tmp_path / "old.json")


@pytest.fixture(scope="module")
def spread_space():
    return SearchSpace(
        "spread", Range(1, 4, 3), Range(32, 256, 224), Range(2.0, 4.0, 2.0), Range(1, 8, 7), 32
    )


def test_profile_and_validate_on_this_cpu_smoke(spread_space, tmp_path):
    """Real measurements, kept small (2 cores shared with others): the protocol runs end to end and
    records threads, affinity and noise; accuracy is a benchmark (bench/latency_validate.py), not a test."""
    st = ProfileSettings(seq_len=32, rounds=2, round_s=0.03, warmup_s=0.01, threads=1)
    table = build_table([spread_space], st, vocab=2000, grid=(2, 2, 2), calibrate=4)
    assert (
        sum(r["kind"] == "grid" for r in table.rows) == 8
        and table.key["device_name"] == machine_key(st)["device_name"]
    )
    assert table.meta["threads"]["threads"] == 1 and len(table.meta["threads"]["affinity"]) == 1
    rep = validate_table(table, [spread_space], st, n=4, seed=3, out_dir=tmp_path)
    assert rep["overall"]["kendall_tau"] > 0 and math.isfinite(rep["noise"]["sd_pct"])
    assert (tmp_path / "latency_validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = dataclasses.replace(table, key={**table.key, "device_name": "NVIDIA H100"})
    with pytest.raises(ValueError, match="refusing to validate: the table was measured on NVIDIA H100"):
        validate_table(other, [spread_space], st, n=2)


def test_profile_settings_errors():
    with pytest.raises(ValueError, match="device 'tpu' is not allowed"):
        ProfileSettings(device="tpu")
    with pytest.raises(ValueError, match="runtime 'tvm' is not allowed"):
        ProfileSettings(runtime="tvm")
    with pytest.raises(ValueError, match="depths \\(2,\\) must hold at least two distinct depths"):
        ProfileSettings(depths=(2,))
    with pytest.raises(ValueError, match="stat 'mean' is not allowed"):
        ProfileSettings(stat="mean")


def test_profile_in_subprocess_passes_every_setting(monkeypatch, tmp_path):
    """A fresh-process profile gets every ProfileSettings field (it used to forward them flag by
    flag and drop min_runs, max_runs and low_pct), and the CLI builds the same settings from it."""
    import argparse
    import json
    from autodistil import cli
    from autodistil.cli.latency import cmd_profile
    from autodistil.config import build_dataclass
    from autodistil.latency import run_measure

    st = ProfileSettings(
        rounds=5,
        round_s=0.01,
        warmup_s=0.0,
        min_runs=7,
        max_runs=90,
        anchor_every=3,
        low_pct=20.0,
        stat="low",
        depths=(0, 3),
        threads=1,
    )
    seen = {}

    def fake_run(cmd, what, timeout_s):
        seen["cmd"] = cmd
        return argparse.Namespace(stdout="", stderr="", returncode=0)

    monkeypatch.setattr(run_measure, "_run_cli", fake_run)
    run_measure.profile_in_subprocess([], tmp_path / "t.json", st, log=lambda *_: None)
    cmd = seen["cmd"]
    sent = json.loads(cmd[cmd.index("--settings") + 1])
    assert ProfileSettings.from_dict(sent) == st

    got = {}

    def fake_build(spaces, s, **kw):
        got["st"], got["grid"] = s, kw.get("grid")
        raise RuntimeError("stop after settings")

    monkeypatch.setattr("autodistil.latency.profile.build_table", fake_build)
    ap = cli.build_parser()
    with pytest.raises(RuntimeError, match="stop after settings"):
        cmd_profile(ap.parse_args(cmd[cmd.index("profile") :]))
    assert got["st"] == st
    assert (
        "--grid" not in cmd and got["grid"] is None
    )  # no grid asked: build_table takes the device's default
    run_measure.profile_in_subprocess([], tmp_path / "t.json", st, grid=(2, 4, 2), log=lambda *_: None)
    cmd = seen["cmd"]
    with pytest.raises(RuntimeError, match="stop after settings"):
        cmd_profile(ap.parse_args(cmd[cmd.index("profile") :]))
    assert list(got["grid"]) == [2, 4, 2]
    for bad, msg in (
        ('{"bogus": 1}', "unknown"),
        ("[1]", "JSON object"),
        ("{", "not JSON"),
        ('{"cuda_graphs": "false"}', "expected bool"),
        ('{"batch": "1"}', "expected int"),
        ('{"depths": [0, 2.5]}', "expected list"),
    ):
        with pytest.raises(ValueError, match=msg):
            cmd_profile(ap.parse_args(["profile", "--out", str(tmp_path / "x.json"), "--settings", bad]))
    with pytest.raises(ValueError, match="--rounds given beside --settings"):
        cmd_profile(
            ap.parse_args(
                [
                    "profile",
                    "--out",
                    str(tmp_path / "x.json"),
                    "--rounds",
                    "3",
                    "--settings",
                    json.dumps(st.to_dict()),
                ]
            )
        )
    # a flag typed at its default value would be ignored just the same: refused too
    for flag in (["--threads", "0"], ["--rounds", "12"], ["--cuda-graphs"], ["--depths", "0", "2", "4"]):
        with pytest.raises(ValueError, match=f"{flag[0]} given beside --settings"):
            cmd_profile(
                ap.parse_args(
                    [
                        "profile",
                        "--out",
                        str(tmp_path / "x.json"),
                        *flag,
                        "--settings",
                        json.dumps(st.to_dict()),
                    ]
                )
            )
    a = ap.parse_args(["profile", "--out", "x", "--batch", "4", "--cuda-graphs", "--device", "cuda"])
    s = build_dataclass(ProfileSettings, {}, a)
    assert (s.batch, s.cuda_graphs, s.rounds, s.depths) == (4, True, 12, (0, 2, 4))


class StepInHeadsDevice(SyntheticDevice):
    """A device whose per-layer cost jumps between 3 and 4 heads (as GPU tiling does), so latency is
    not linear in heads: a grid with only the ends of the heads range mispredicts 3 and 4 heads."""

    def runner(self, spec):
        ms = true_ms(spec) + (0.4 * spec.layers if spec.heads >= 4 else 0.0)

        def run():
            self.t += ms * math.exp(self.rng.gauss(0, self.noise)) / 1e3

        return run


def test_default_grid_covers_every_heads_value_on_cuda(synth_space):
    """Without a grid, build_table profiles the device's default: on CUDA every heads value of the
    space (4 here), so a cost that is not linear in heads is still predicted within 2 %; the CPU
    default (2 heads points: the ends) is off by more at the jump."""
    from autodistil.latency.profile import default_grid

    assert default_grid("cpu") == (3, 2, 2) and default_grid("cuda:1") == (3, 4, 2)
    studs = [c for c in _students(synth_space, n=60) if c.heads in (3, 4)]
    truth = lambda c: (
        true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn)) + (0.4 * c.layers if c.heads >= 4 else 0)
    )
    err = lambda t: max(abs(t.predict(c) / truth(c) - 1) for c in studs)
    gpu = build_table(
        [synth_space],
        dataclasses.replace(SYN, device="cuda"),
        calibrate=0,
        device=StepInHeadsDevice(seed=11, stall_p=0.0),
    )
    cpu = build_table([synth_space], SYN, calibrate=0, device=StepInHeadsDevice(seed=11, stall_p=0.0))
    assert gpu.meta["grid_points"] == [3, 4, 2] and cpu.meta["grid_points"] == [3, 2, 2]
    assert gpu.grids[0]["heads"] == [2, 3, 4, 5] and cpu.grids[0]["heads"] == [2, 5]
    assert err(gpu) < 0.02, err(gpu)
    assert err(cpu) > 0.05, err(cpu)


def test_reanchor_at_use_recovers_a_machine_that_slowed_down(synth_space):
    """The table is profiled at one speed, used when the machine runs 12 % slower: its predictions
    come out ~11 % low; the anchor timed at use (speed_now) gives the factor, and the rescaled
    table predicts within 2 %. The factor is a use-time setting: the table itself is unchanged."""
    from autodistil.latency.validate import speed_now

    table = build_table([synth_space], SYN, grid=(3, 2, 2), calibrate=0, device=SyntheticDevice(seed=21))
    slow = SyntheticDevice(seed=22, drift=lambda t: 1.12)
    sp = speed_now(table, SYN, device=slow)
    assert sp["factor"] == pytest.approx(1.12, rel=0.02) and sp["table_anchor_ms"] == table.anchor_ms
    truth = lambda c: 1.12 * true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn))  # noqa: E731
    studs = _students(synth_space)
    as_is = max(abs(table.predict(c) / truth(c) - 1) for c in studs)
    now = table.rescaled(sp["factor"])
    assert as_is > 0.08, as_is
    assert max(abs(now.predict(c) / truth(c) - 1) for c in studs) < 0.02
    c = studs[0]
    assert now.predict_low(c) == pytest.approx(sp["factor"] * table.predict_low(c))
    assert now.predict_with_uncertainty(c)[1] == pytest.approx(
        sp["factor"] * table.predict_with_uncertainty(c)[1]
    )
    assert table.speed == 1.0
    # with a learned correction the speed scales the corrected prediction: s x (a x raw + b)
    table.correction = {"a": 0.9, "b": 0.5, "rel_sd": 0.01}
    assert table.rescaled(1.3).predict(c) == pytest.approx(1.3 * (0.9 * table.raw(c)[0] + 0.5))
    with pytest.raises(ValueError, match="fit_correction on a table rescaled by 1.3"):
        table.rescaled(1.3).fit_correction(studs[:6], [1.0] * 6)
    with pytest.raises(ValueError, match="validate the table as profiled"):
        validate_table(table.rescaled(1.3), [synth_space], SYN, n=2)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="speed factor must be a positive finite number"):
            table.rescaled(bad)


def test_predict_command(synth_space, tmp_path, capsys):
    """`autodistil predict`: predictions of named subnets from a table (JSON too); a subnet outside
    the table's spaces and a malformed one are refused; --reanchor refuses a table from another
    device (the anchor here says nothing about it)."""
    import json
    from autodistil import cli
    from autodistil.space import SubnetConfig

    table = build_table([synth_space], SYN, grid=(3, 2, 2), calibrate=0, device=SyntheticDevice(seed=23))
    path = table.save(tmp_path / "t.json")
    c = SubnetConfig(4, 96, 3.0, 3)  # 3 heads x 32 == 96: exports as BertModel
    assert SubnetConfig.parse(c.short()) == c and SubnetConfig.parse("L2-H64-R2.5-A2") == SubnetConfig(
        2, 64, 2.5, 2
    )
    for bad in ("L2-H64-A2", "2-64-2-2", "", "L2-H64-R2-A2-x"):
        with pytest.raises(ValueError, match="is not of the form L<layers>"):
            SubnetConfig.parse(bad)
    out = tmp_path / "p.json"
    assert (
        cli.main(
            [
                "predict",
                "--table",
                str(path),
                "--layers",
                "4",
                "--hidden",
                "96",
                "--ffn-ratio",
                "3",
                "--heads",
                "3",
                "--subnet",
                "L2-H64-R2-A5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert [p["subnet"] for p in got["predictions"]] == [c.short(), "L2-H64-R2-A5"] and got["speed"] is None
    assert got["predictions"][0]["ms"] == pytest.approx(table.predict(c))
    assert (
        got["predictions"][0]["class"] == "plain" and got["predictions"][1]["class"] == "AutoDistilBertModel"
    )
    assert f"{c.short()}: {table.predict(c):.3f} ms" in capsys.readouterr().out
    assert cli.main(["predict", "--table", str(path), "--subnet", "L9-H64-R2-A2"]) == 2
    assert "in none of the table's spaces" in capsys.readouterr().err
    assert (
        cli.main(["predict", "--table", str(path), "--subnet", "L9-H64-R2-A2", "--allow-outside-space"]) == 0
    )
    assert "outside the table's spaces" in capsys.readouterr().out
    assert cli.main(["predict", "--table", str(path), "--subnet", "L2-H64-A2"]) == 2
    assert "is not of the form" in capsys.readouterr().err
    assert cli.main(["predict", "--table", str(path), "--layers", "2"]) == 2
    assert "give all four of --layers" in capsys.readouterr().err
    assert cli.main(["predict", "--table", str(path)]) == 2
    assert "no subnet" in capsys.readouterr().err
    for rounds in (["--rounds", "3"], ["--rounds", "1", "--reanchor"]):  # without --reanchor; too few
        assert cli.main(["predict", "--table", str(path), "--subnet", c.short(), *rounds]) == 2
        assert "--rounds" in capsys.readouterr().err
    assert cli.main(["predict", "--table", str(path), "--subnet", c.short(), "--reanchor"]) == 2
    assert "cannot time the anchor for this table here" in capsys.readouterr().err


def test_search_reanchor_helper_rescales_the_loaded_table(synth_space, monkeypatch, capsys, tmp_path):
    """search --reanchor's step: speed_now's factor (timed with the table's own settings, read from
    --table) scales the table the search uses, and without the flag the table is used as loaded."""
    import argparse
    from autodistil.cli.search import reanchor_speed
    from autodistil.latency import validate

    table = build_table([synth_space], SYN, grid=(2, 2, 2), calibrate=0, device=SyntheticDevice(seed=31))
    path = table.save(tmp_path / "t.json")
    seen = {}

    def fake(t, st):
        seen["settings"], seen["anchor"] = st, t.anchor_ms
        return {"factor": 1.2, "anchor_ms": 1.2 * t.anchor_ms, "table_anchor_ms": t.anchor_ms}

    monkeypatch.setattr(validate, "speed_now", fake)
    ns = lambda on: argparse.Namespace(reanchor=on, table=str(path), verify_top=0)  # noqa: E731
    assert reanchor_speed(ns(False)) is None and not seen
    got = table.rescaled(reanchor_speed(ns(True)))
    assert got.speed == 1.2 and table.speed == 1.0 and seen["settings"].to_dict() == table.settings
    assert seen["anchor"] == table.anchor_ms
    assert "scaled by 1.200" in capsys.readouterr().out


def test_cpu_id_tells_apart_hosts_behind_one_cpu_name(synth_space):
    """A VM may report only "AMD EPYC": the key also records family/model/stepping (x86) or
    implementer/part (ARM), compared only where both keys have it (older tables stay usable)."""
    from autodistil.latency.predict import LatencyTable
    from autodistil.latency.profile import cpu_id

    zen1 = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
        "stepping\t: 2\ncache size\t: 512 KB\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 99\n"
    )
    assert cpu_id(zen1) == "AuthenticAMD family 23 model 1 stepping 2 cache 512 KB"  # the first processor's
    assert (
        cpu_id("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
        == "arm implementer 0x41 part 0xd0c"
    )
    assert cpu_id("") is None and cpu_id("model name\t: X\n") is None
    # fields missing from the first block are left out, not taken from another processor or written as None
    assert (
        cpu_id("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\nstepping\t: 7\n")
        == "GenuineIntel family 6 model 85"
    )
    key = {"device_type": "cpu", "device_name": "AMD EPYC", "threads": 1, "cpu_id": cpu_id(zen1)}
    t = build_table([synth_space], SYN, grid=(2, 2, 2), calibrate=0, device=SyntheticDevice(seed=41))
    assert isinstance(t, LatencyTable)
    t.key = key
    assert t.same_device({**key, "cpu_id": "AuthenticAMD family 25 model 1 stepping 1"}) == ["cpu_id"]
    assert t.same_device({k: v for k, v in key.items() if k != "cpu_id"}) == []  # an older table's key
    assert t.same_device({**key, "threads": 2}) == ["threads"]


def test_a_percentile_budget_is_profiled_and_measured_as_that_percentile(synth_space):
    """stat p90: the table predicts the 90th percentile of per-call latency and every measurement with its
    settings reports it. On a device whose calls spread (lognormal, sd 15 %: p90 = 1.21 x the median) the
    p90 table predicts the measured p90 within 3 %; a median table is ~17 % under it."""
    from autodistil.latency.profile import stat_label

    dev = lambda seed: SyntheticDevice(seed=seed, noise=0.15, stall_p=0.0)  # noqa: E731
    p90 = dataclasses.replace(SYN, stat="p90", rounds=6)
    t90 = build_table([synth_space], p90, grid=(3, 2, 2), calibrate=0, device=dev(51))
    t50 = build_table(
        [synth_space], dataclasses.replace(p90, stat="median"), grid=(3, 2, 2), calibrate=0, device=dev(51)
    )
    assert t90.settings["stat"] == "p90" and stat_label("p90") == "the 90th percentile"
    studs = _students(synth_space, 10)
    res = measure_models(
        {c.short(): ModelSpec(c.layers, c.hidden, c.heads, c.ffn) for c in studs},
        t90,
        ProfileSettings.from_dict(t90.settings),
        device=dev(52),
    )
    for c in studs:
        m = res["models"][c.short()]
        truth = true_ms(ModelSpec(c.layers, c.hidden, c.heads, c.ffn))
        assert m["ms"] == pytest.approx(1.21 * truth, rel=0.04)
        assert t90.predict(c) == pytest.approx(m["ms"], rel=0.03)
        assert t50.predict(c) < 0.88 * m["ms"]
    for bad in ("p0", "p100", "p9x", "mean"):
        with pytest.raises(ValueError, match=f"stat '{bad}' is not allowed"):
            ProfileSettings(stat=bad)


def test_a_profile_session_replays_into_the_same_table(synth_space):
    """A profile session keeps its raw runs: the table fitted again from them (`replay`) is the table, and
    the runs can be weighed by round instead of by run (a fast round of a short model holds more runs)."""
    import autodistil.latency.profile as prof

    captured, real = [], prof.measure

    def capture(*a, **kw):
        captured.append(real(*a, **kw))
        return captured[-1]

    prof.measure = capture
    try:
        table = build_table([synth_space], SYN, grid=(2, 2, 2), calibrate=4, device=SyntheticDevice(seed=61))
    finally:
        prof.measure = real
    again = build_table(
        [synth_space], SYN, grid=(2, 2, 2), calibrate=4, device=SyntheticDevice(seed=99), replay=captured[0]
    )
    c = SubnetConfig(3, 80, 2.5, 3)
    assert again.predict(c) == table.predict(c) and again.rows == table.rows
    by_round = captured[0].renormalised("median", 10.0, "rounds")
    name, t = next(iter(by_round.timings.items()))
    assert t.weighting == "rounds" and t.ms == pytest.approx(captured[0].timings[name].ms, rel=0.05)
    # one round of three runs and one of one run weigh alike: the median lies between 3 and 10 (pooled: 2.5)
    assert prof.round_weighted_percentile([[1.0, 2.0, 3.0], [10.0]], 50) == pytest.approx(4.75)
    assert prof.round_weighted_percentile([[1.0, 2.0, 3.0, 4.0]], 50) == 2.5
    with pytest.raises(ValueError, match="replayed session lacks"):
        build_table([synth_space], SYN, grid=(3, 2, 2), calibrate=0, replay=captured[0])


def test_names_of_one_statistic_are_one_statistic(synth_space, tmp_path):
    """p05 and p5 are one statistic, and so are low and p10 where the low percentile is the 10th: a table
    profiled under one name serves a search or run that asks for the other (they used to be compared as
    strings and refused). A low table profiled at low_pct 5 is labelled the 5th percentile, and a bad
    name is refused naming the flag or field and what is allowed."""
    import argparse
    import json
    from autodistil.cli.search import check_latency_stat
    from autodistil.latency.profile import check_stat, same_stat, stat_label
    from autodistil.pipeline import RunConfig, SearchConfig
    from autodistil.preflight import check_table

    assert [check_stat(s) for s in ("median", "low", "p5", "p05", "p90", "p090")] == [
        "median",
        "low",
        "p5",
        "p5",
        "p90",
        "p90",
    ]
    assert ProfileSettings(stat="p05").stat == "p5" and SearchConfig(latency_stat="p05").latency_stat == "p5"
    assert same_stat("low", "p10") and same_stat("p50", "median") and same_stat("p05", "p5")
    assert not same_stat("low", "p10", 5.0, 5.0) and same_stat("low", "p5", 5.0, 5.0)
    assert stat_label("low", 5.0) == "the 5th percentile" and stat_label("p05") == "the 5th percentile"
    with pytest.raises(
        ValueError, match=r"--latency-stat 'p100' is not allowed: choose median, low .*p1-p99"
    ):
        check_stat("p100", "--latency-stat")
    with pytest.raises(ValueError, match=r"^latency_stat 'p100' is not allowed: choose median, low"):
        SearchConfig(latency_stat="p100")

    table = build_table([synth_space], SYN, grid=(2, 2, 2), calibrate=0, device=SyntheticDevice(seed=61))
    table.meta["teacher"] = {"name": "t", "ms": 40.0}
    path = table.save(tmp_path / "t.json")

    def with_stat(stat, low_pct=10.0):
        d = json.loads(path.read_text())
        d["settings"].update(stat=stat, low_pct=low_pct)
        path.write_text(json.dumps(d))

    def search_args(stat):
        return argparse.Namespace(latency_stat=stat, table=str(path))

    def run_cfg(stat):
        return RunConfig(table=str(path), search=SearchConfig(latency_stat=stat))

    for have, want in (("p05", "p5"), ("p5", "p05"), ("low", "p10"), ("p10", "low"), ("p50", "median")):
        with_stat(have)
        check_latency_stat(search_args(want))
        assert check_table(run_cfg(want), [synth_space], HEAD_DIM)["path"] == str(path)
    with_stat("low", 5.0)  # the 5th percentile, not the 10th
    with pytest.raises(ValueError, match=r"predicts the 5th percentile per call \(low\); profile"):
        check_latency_stat(search_args("p10"))
    with pytest.raises(ValueError, match=r"predicts the 5th percentile per call \(low\), the run's budgets"):
        check_table(run_cfg("p10"), [synth_space], HEAD_DIM)
    check_latency_stat(search_args("p5"))
    check_latency_stat(search_args("low"))  # low: the table's low percentile
    with pytest.raises(ValueError, match=r"^--latency-stat 'p100' is not allowed: choose median"):
        check_latency_stat(search_args("p100"))


def test_latency_stat_help_says_the_percentile_is_over_anchor_normalised_runs():
    import argparse
    from autodistil.cli import build_parser
    from autodistil.config import add_dataclass_args
    from autodistil.pipeline import RunConfig

    run = argparse.ArgumentParser()
    add_dataclass_args(run, RunConfig)
    se = build_parser()._subparsers._group_actions[0].choices["search"]
    for p in (run, se):
        h = " ".join(next(a.help for a in p._actions if "--latency-stat" in a.option_strings).split())
        assert "anchor-normalised runs" in h and "anchor model's speed at its time" in h, h
        assert "whole-machine slowdowns that also slow the anchor are taken out" in h, h
