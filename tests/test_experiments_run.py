"""The experiments run against the current API, end to end on a tiny run (tiny teacher, 3 training
steps, short timings, 3 fine-tuning steps): a minute or more on 2 cores (the whole pipeline runs), so
marked slow. Their figures mean nothing at this size; what is checked is that each one goes through
against the current API and writes its outputs."""

import json
import shutil
from pathlib import Path

import pytest

from experiments.common import RESULTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tiny_teacher_dir, tmp_path_factory):
    from autodistil.pipeline import run_pipeline
    from test_pipeline import tiny_config

    tmp = tmp_path_factory.mktemp("exp")
    run_pipeline(tiny_config(tmp, tiny_teacher_dir), log=lambda m: None)
    return tmp / "run"


def test_students_vs_baselines_and_student_recipe(tiny_run, tmp_path):
    from experiments import student_recipe, students_vs_baselines

    students_vs_baselines.main(["--run", str(tiny_run), "--seeds", "0", "1", "--out", str(tmp_path / "svb")])
    s = json.loads((tmp_path / "svb" / "students_vs_baselines.json").read_text())
    assert s["seeds"] == [0, 1] and s["budgets"] and (tiny_run / "finetuned_seed1").is_dir()
    name = next(iter(json.loads((tiny_run / "stages" / "export.json").read_text())["output"]["students"]))
    doc = student_recipe.main(
        [
            "--run",
            str(tiny_run),
            "--students",
            name,
            "--recipes",
            "1e-3:1:0.5",
            "--out",
            str(tmp_path / "recipe"),
        ]
    )
    assert len(doc["rows"]) == 1 and doc["rows"][0]["setting"]["seq"] == 32


def test_latency_vs_flops_and_table_reuse(tiny_run, tmp_path):
    from experiments import latency_vs_flops, table_reuse

    latency_vs_flops.main(
        [str(tiny_run), "--fractions", "0.9", "--rounds", "2", "--out", str(tmp_path / "lvf")]
    )
    assert "budgets" in json.loads((tmp_path / "lvf" / "latency_vs_flops.json").read_text())
    assert (
        table_reuse.main(
            ["--table", str(tiny_run / "latency_table.json"), "--n", "4", "--out", str(tmp_path / "reuse")]
        )
        == 0
    )
    assert "all" in json.loads((tmp_path / "reuse" / "table_reuse.json").read_text())["scopes"]


def test_objective_rank_on_a_run_supernet(tiny_run, tmp_path):
    from experiments import objective_rank

    finetune = json.loads((tiny_run / "stages" / "finetune.json").read_text())["output"]
    teacher_ft = finetune["teacher"]["folder"]
    objective_rank.main(
        [
            "--supernet",
            str(tiny_run / "supernets" / "small"),
            "--teacher-ft",
            teacher_ft,
            "--n",
            "10",
            "--pool",
            "12",
            "--heldout-blocks",
            "2",
            "--max-seq-len",
            "32",
            "--batch",
            "8",
            "--max-train-examples",
            "16",
            "--max-eval-examples",
            "16",
            "--boot",
            "50",
            "--perm",
            "50",
            "--out",
            str(tmp_path / "orank"),
            "--work",
            str(tmp_path / "work"),
        ]
    )
    res = json.loads((tmp_path / "orank" / "objective_rank.json").read_text())
    assert len(res["subnets"]) == 10 and res["verdict"]


def test_rewire_init_on_the_tiny_teacher(tiny_teacher_dir, tmp_path):
    from experiments import rewire_init

    out = tmp_path / "rewire.json"
    assert (
        rewire_init.main(
            [
                "--teacher",
                str(tiny_teacher_dir),
                "--spaces",
                "small",
                "--seq-len",
                "32",
                "--eval-blocks",
                "2",
                "--max-train-blocks",
                "20",
                "--n-random",
                "1",
                "--no-attention-map",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "small" in json.loads(out.read_text())["spaces"]


def test_teacher_lr_fresh(tmp_path):
    from experiments import teacher_lr

    res = teacher_lr.main(
        [
            "--lrs",
            "1e-4",
            "--batch",
            "16",
            "--max-train-examples",
            "32",
            "--fresh",
            "--out",
            str(tmp_path / "tlr"),
        ]
    )
    assert res["rows"][0]["lr"] == 1e-4 and (tmp_path / "tlr" / "teacher_lr.json").is_file()


def test_protocol_noise_summary_reproduces_the_recorded_one(tmp_path):
    from experiments import protocol_noise

    src = RESULTS / "2026-11-26_protocol_noise"
    shutil.copy(src / "sessions.json", tmp_path / "sessions.json")
    assert protocol_noise.main(["--summary-only", "--out", str(tmp_path)]) == 0
    got, want = (json.loads(Path(p).read_text()) for p in (tmp_path / "summary.json", src / "summary.json"))
    for g, w in zip(got, want):
        assert g["protocol"] == w["protocol"]
        for k in ("cross_session_cv_pct_mean", "cross_session_cv_pct_max", "split_half_sd_pct_mean"):
            assert g[k] == pytest.approx(w[k], rel=1e-12)
