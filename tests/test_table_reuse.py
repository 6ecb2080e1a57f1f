"""experiments/table_reuse.py: per scope, the table's predictions as is, x the pre-timed factor and x
the interleaved ratio against the students measured now."""

import pytest

from experiments import table_reuse


def test_table_reuse_scores_as_is_and_rescaled_predictions():
    rows = [
        {"space": "tiny", "measured_ms": 2.0, "predicted_ms": 1.0},
        {"space": "base", "measured_ms": 4.0, "predicted_ms": 2.1},
    ]
    rep = table_reuse.reuse_report(rows, factor=2.0, drift=1.5)
    assert set(rep) == {"all", "tiny", "base"} and rep["all"]["n"] == 2
    assert rep["tiny"]["as_is"]["mape_pct"] == 50.0 and rep["tiny"]["reanchored"]["mape_pct"] == 0.0
    assert rep["base"]["reanchored"]["bias_pct"] == pytest.approx(5.0)
    assert rep["base"]["reanchored"]["within_10_pct"] == 100
    assert rep["all"]["interleaved"]["mape_pct"] == pytest.approx((25.0 + 21.25) / 2)
