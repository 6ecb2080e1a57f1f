"""bench/collect_run.py: a finished run's report and stage seconds copied into a dated folder; an
unfinished run refused before anything is written. bench/ holds scripts, not a package: the script
is loaded from its file."""

import importlib.util
import json
import time
from pathlib import Path

import pytest

from autodistil.pipeline import STAGES

_SPEC = importlib.util.spec_from_file_location(
    "collect_run", Path(__file__).resolve().parent.parent / "bench" / "collect_run.py"
)
collect_run = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(collect_run)


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
    doc = collect_run.main(
        ["--run", str(run), "--name", "x", "--note", "test", "--out", str(tmp_path / "out")]
    )
    n = len(STAGES)
    assert doc["total_s"] == pytest.approx(10.0 * n * (n + 1) / 2)
    assert list(doc["stage_seconds"]) == list(STAGES)
    assert (tmp_path / "out" / "report.md").read_text() == "# report"
    assert "search/verified.json" in doc["missing_files"] and "report.md" not in doc["missing_files"]
    assert json.loads((tmp_path / "out" / "stage_seconds.json").read_text())["note"] == "test"


def test_default_folder_is_dated_by_the_report_stage(tmp_path, monkeypatch):
    run = _run(tmp_path)
    monkeypatch.setattr(collect_run, "RESULTS", tmp_path / "results")
    collect_run.main(["--run", str(run), "--name", "main_run", "--note", "test"])
    day = time.strftime("%Y-%m-%d", time.gmtime((run / "stages" / "report.json").stat().st_mtime))
    assert (tmp_path / "results" / f"{day}_main_run" / "report.md").is_file()


def test_unfinished_run_is_refused(tmp_path):
    run = _run(tmp_path, STAGES[:-1])
    with pytest.raises(SystemExit, match="report.json is missing"):
        collect_run.main(["--run", str(run), "--name", "x", "--note", "t", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
