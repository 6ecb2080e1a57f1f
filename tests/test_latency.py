import dataclasses

import pytest

from autodistil.latency.predict import LatencyTable
from autodistil.latency.profile import ProfileSettings, build_table, machine_key
from autodistil.latency.validate import error_stats, kendall_tau, noise_floor, validate_table
from autodistil.space import Range, SearchSpace, SubnetConfig


def _synthetic_table(grid_h=(64, 96, 128), grid_a=(2, 4), grid_r=(2.0, 4.0)):
    f = lambda h, a, r: 0.01 * h + 0.2 * a + 0.5 * r + 0.001 * h * a  # multilinear in (h, a, r)
    layers = [{"hidden": h, "heads": a, "ratio": r, "ffn": int(h * r), "ms": f(h, a, r), "spread": 0.01}
              for h in grid_h for a in grid_a for r in grid_r]
    base = [{"hidden": h, "bert": b, "ms": 0.5 + 0.002 * h, "spread": 0.02} for h in grid_h for b in (True, False)]
    key = {"device_type": "cpu", "device_name": "synthetic", "torch": "x", "runtime": "torch", "dtype": "fp32",
           "batch": 1, "seq_len": 128, "threads": 2}
    return LatencyTable(key, {}, 32, 30522, [], base, layers), f


def test_interpolation_exact_on_grid_and_for_multilinear_costs(tmp_path):
    t, f = _synthetic_table()
    for cfg in (SubnetConfig(3, 96, 2.0, 4), SubnetConfig(1, 64, 4.0, 2)):
        base = 0.5 + 0.002 * cfg.hidden
        assert t.predict(cfg) == pytest.approx(base + cfg.layers * f(cfg.hidden, cfg.heads, cfg.ffn_ratio), rel=1e-12)
    off = SubnetConfig(2, 80, 3.0, 3)  # between grid points: trilinear is exact for multilinear costs
    assert t.predict(off) == pytest.approx(0.5 + 0.002 * 80 + 2 * f(80, 3, 3.0), rel=1e-9)
    ms, sd = t.predict_with_uncertainty(off)
    assert sd > 0
    t.save(tmp_path / "t.json")
    t2 = LatencyTable.load(tmp_path / "t.json")
    assert t2.predict(off) == t.predict(off) and t2.key == t.key
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not an autodistil latency table"):
        LatencyTable.load(tmp_path / "bad.json")


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
    nf = noise_floor({"a": [10.0, 10.0, 11.0]})
    assert nf["noise_mape_pct"] == pytest.approx(100 * (0.5 / 10.5 + 0.5 / 10.5 + 1 / 10) / 3)


def test_correction_is_kept_only_when_it_helps():
    t, f = _synthetic_table()
    cfgs = [SubnetConfig(l, h, r, a) for l in (1, 3) for h in (64, 128) for r, a in ((2.0, 2), (4.0, 4))]
    truth = [1.3 * t.raw(c)[0] + 0.7 for c in cfgs]  # a systematic, learnable bias
    rep = t.fit_correction(cfgs, truth)
    assert rep["used"] and t.correction["a"] == pytest.approx(1.3) and t.predict(cfgs[0]) == pytest.approx(truth[0])


@pytest.fixture(scope="module")
def spread_space():
    return SearchSpace("spread", Range(1, 4, 3), Range(32, 256, 224), Range(2.0, 4.0, 2.0), Range(1, 8, 7), 32)


def test_profile_and_validate_on_this_cpu(spread_space, tmp_path):
    """A widely spread tiny space: predictions must be sane (loose bound; real figures in README)."""
    st = ProfileSettings(seq_len=32, rounds=3, runs=5, warmup=1, threads=1)
    table = build_table([spread_space], st, vocab=2000, calibrate=4)
    assert len(table.layers) == 8 and table.key["device_name"] == machine_key(st)["device_name"]
    rep = validate_table(table, [spread_space], st, n=6, seed=3, out_dir=tmp_path)
    assert rep["overall"]["mape_pct"] < 60 and rep["overall"]["kendall_tau"] > 0
    assert (tmp_path / "latency_validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = dataclasses.replace(table, key={**table.key, "device_name": "NVIDIA H100"})
    with pytest.raises(ValueError, match="refusing to validate: the table was measured on NVIDIA H100"):
        validate_table(other, [spread_space], st, n=2)


def test_profile_settings_errors():
    with pytest.raises(ValueError, match="device 'tpu' is not allowed"):
        ProfileSettings(device="tpu")
    with pytest.raises(ValueError, match="runtime 'tvm' is not allowed"):
        ProfileSettings(runtime="tvm")
