"""bench/collect_run.py: a finished run's report and stage seconds copied; an unfinished run refused."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import collect_run  # noqa: E402
from autodistil.pipeline import STAGES  # noqa: E402


def _run(tmp_path, stages=STAGES):
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (run / "report.md").write_text("# report")
    for i, s in enumerate(stages):
        (run / "stages" / f"{s}.json").write_text(json.dumps({"stage": s, "seconds": 10.0 * (i + 1)}))
    return run


def test_collects_report_and_sums_stage_seconds(tmp_path):
    run = _run(tmp_path)
    doc = collect_run.main(["--run", str(run), "--name", "x", "--note", "test", "--out", str(tmp_path / "out")])
    n = len(STAGES)
    assert doc["total_s"] == pytest.approx(10.0 * n * (n + 1) / 2)
    assert list(doc["stage_seconds"]) == list(STAGES)
    assert (tmp_path / "out" / "report.md").read_text() == "# report"
    assert "search/verified.json" in doc["missing_files"] and "report.md" not in doc["missing_files"]
    assert json.loads((tmp_path / "out" / "stage_seconds.json").read_text())["note"] == "test"


def test_unfinished_run_is_refused(tmp_path):
    run = _run(tmp_path, STAGES[:-1])
    with pytest.raises(SystemExit, match="report.json is missing"):
        collect_run.main(["--run", str(run), "--name", "x", "--note", "t", "--out", str(tmp_path / "out")])
