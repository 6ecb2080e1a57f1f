import json
import subprocess
import sys
from pathlib import Path

import pytest

from autodistil.pipeline import RunConfig, run_pipeline


def _merge(base: dict, kw: dict) -> dict:
    out = dict(base)
    for k, v in kw.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


TINY = {
    "train": {
        "spaces": ["small", "base"],
        "steps": 3,
        "batch_size": 2,
        "seq_len": 32,
        "max_train_blocks": 20,
        "eval_blocks": 2,
    },
    "profile": {"rounds": 2, "round_s": 0.02, "grid": [2, 2, 2], "calibrate": 4, "seq_len": 32},
    "measure_rounds": 2,
    "verify_top": 2,
    "heldout_blocks": 2,
    "budget_fractions": [0.6, 0.9],
    "finetune": {
        "max_steps": 3,
        "batch_size": 8,
        "max_seq_len": 32,
        "max_train_examples": 48,
        "max_eval_examples": 40,
    },
}


def tiny_config(tmp_path, teacher, **kw) -> RunConfig:
    """A run of the whole pipeline in about a minute: tiny teacher, 3 training steps, short timings. Built
    the way a config file is read (nested sections), so the file vocabulary is exercised too."""
    from autodistil.config import build_dataclass

    base = {
        **TINY,
        "out_dir": str(tmp_path / "run"),
        "teacher": str(teacher),
        "cache_dir": str(tmp_path / "cache"),
    }
    return build_dataclass(RunConfig, _merge(base, kw))


_tiny = tiny_config


@pytest.mark.slow
def test_run_end_to_end_artefacts_and_resume(tiny_teacher_dir, tmp_path):
    logs = []
    state = run_pipeline(_tiny(tmp_path, tiny_teacher_dir, stop_after="search"), log=logs.append)
    assert set(state) == {"train", "profile", "search"}
    sn = Path(state["train"]["supernets"][0]) / "supernet.safetensors"
    mtime = sn.stat().st_mtime_ns
    logs.clear()
    state = run_pipeline(_tiny(tmp_path, tiny_teacher_dir), log=logs.append)
    for stage in ("train", "profile", "search"):  # an interrupted run resumes without redoing these
        assert f"[{stage}] cached" in " ".join(logs), logs
    assert sn.stat().st_mtime_ns == mtime
    out = tmp_path / "run"
    res = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    # every student folder loads in a fresh process with AutoModel.from_pretrained
    folders = [m["folder"] for m in res["models"] if m["kind"] != "teacher"]
    assert folders and any(m["kind"] == "searched" for m in res["models"])
    code = (
        "import sys, autodistil; from transformers import AutoModel\n"
        "for f in sys.argv[1:]: AutoModel.from_pretrained(f)\nprint('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code, *folders], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    # the report's numbers are results.json's
    for m in res["models"]:
        line = next(l for l in report.splitlines() if l.startswith(f"| {m['name']} | {m['layers']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[5]) == pytest.approx(m["gmacs_exact"], abs=5e-4)
        assert float(cells[8]) == pytest.approx(m["latency_ms"], abs=5e-3)
        assert cells[9] == f"{m['speedup']:.2f}x"
        line2 = next(
            l for l in report.splitlines() if l.startswith(f"| {m['name']} | {m['gmacs_exact']:.3f} |")
        )
        assert f"| {m['score']:.4f} |" in line2
    # every budget: predicted, verified at search time, measured in a fresh process; a chosen student's
    # verified latency + margin meets its budget on the mean over the sessions it was timed in
    assert res["budgets"] and all(b["student"] is None or b["verified_use"] <= 1 for b in res["budgets"])
    assert (
        "| budget (ms) | student | predicted (ms) | corrected (ms) | verified at search (ms) | "
        "measured here (ms) | share of budget | holds |"
    ) in report
    # what a budget bounds is said: the median of one call at the profile's batch, seq len and threads
    assert res["latency_statistic"]["stat"] == "median"
    assert "Every latency here is the median of one forward call (batch 1, seq len 32" in report
    # each verification session: the correction the search ran under, what it offered, the choice after it
    v = res["verification"]
    assert v["sessions"] and v["sessions"][0]["correction"] is None and v["verify_rounds"] == 4
    assert all(s["correction"]["kind"] in ("none", "global", "space", "size") for s in v["sessions"][1:])
    assert "### Verification sessions" in report
    assert {b["budget"] for b in res["budgets"] if b["student"]} <= set(v["rounds"])
    t_here = res["models"][0]["latency_ms"]
    srch_out = json.loads((out / "stages" / "search.json").read_text())["output"]
    for b in res["budgets"]:  # fractional budgets: judged against the teacher timed in the report's session
        if b["student"] and b["fraction"]:
            assert b["budget_here_ms"] == pytest.approx(b["fraction"] * t_here)
            assert b["holds"] == (b["measured_ms"] / t_here <= b["fraction"])
            assert b["share_of_budget"] == pytest.approx(b["measured_ms"] / b["budget_here_ms"])
            assert (
                f"| {b['fraction']:g}x = {b['budget_ms']:.2f} | {b['student']} | {b['predicted_ms']:.2f} |"
                in report
            )
        elif b["student"]:  # no fraction reachable: the search fell back to an ms budget, judged in ms
            assert srch_out["skipped_fractions"] == [0.6, 0.9] and b["holds"] == (
                b["measured_ms"] <= b["budget_ms"]
            )
            assert f"| {b['budget_ms']:.2f} | {b['student']} | {b['predicted_ms']:.2f} |" in report
    assert (out / "latency" / "measure.json").is_file() and (out / "search" / "verified.json").is_file()
    # baselines at equal measured latency: per budget the searched student, the teacher's first k layers
    # (the largest k whose latency + margin, timed with the students' finalists at search time, meets the
    # budget) and the FLOPs-search student, all fine-tuned with KD
    meas = json.loads((out / "latency" / "measure.json").read_text())["models"]
    ver = json.loads((out / "search" / "verified.json").read_text())
    assert {"teacher", "teacher-first1"} <= set(ver["measured"]) and ver["teacher_ms"] == ver["measured"][
        "teacher"
    ]["ms"]
    assert res["comparison"] and len(res["comparison"]) == len([b for b in res["budgets"] if b["student"]])
    for cmp in res["comparison"]:
        roles = {r["role"]: r for r in cmp["rows"]}
        assert set(roles) == {"searched", "first-layers", "flops-search"}
        vb = next(b for b in ver["budgets"] if b["budget_ms"] == cmp["budget_ms"])
        cuts = [c for c in vb["first_layers"]["checked"] if c["name"] == "teacher-first1"]
        # the students' rule over every session the cut was timed in
        fits = sum((c["measured_ms"] + c["margin_ms"]) / c["budget_ms"] for c in cuts) <= len(cuts)
        assert roles["first-layers"]["name"] == ("teacher-first1" if fits else None)
        if not fits:
            assert "none fits" in roles["first-layers"]["why"] and "teacher-first1: measured" in report
        for r in cmp["rows"]:
            if r["name"]:
                assert r["measured_ms"] == pytest.approx(meas[r["name"]]["ms"])
                assert r["share_of_teacher"] == pytest.approx(r["score"] / res["models"][0]["score"])
    assert "## Students vs baselines at equal latency" in report
    # baseline (b): the FLOPs search's pick stays within the same fraction of the teacher's MACs at the run's
    # seq len (the search counted MACs at another seq len once)
    srch = json.loads((out / "stages" / "search.json").read_text())["output"]
    for label, fb in srch["flops_best"].items():
        assert fb["macs"] <= fb["macs_budget"] and fb["macs_fraction"] == pytest.approx(
            fb["macs_budget"] / srch["teacher_macs"]
        )
        if label in srch["best"]:
            assert fb["macs_budget"] == round(srch["best"][label]["fraction"] * srch["teacher_macs"])
    # fractional budgets are fractions of the teacher timed in the verification session
    # (a fraction whose provisional budget is below every candidate is skipped, and said)
    kept = [f for f in (0.6, 0.9) if f not in srch["skipped_fractions"]]
    if kept:  # each budget is its fraction of the teacher timed in the session its student was timed in
        teachers = [s["teacher_ms"] for s in ver["sessions"] if s["teacher_ms"]]
        assert teachers[0] == ver["teacher_ms"]
        assert sorted(b["fraction"] for b in ver["budgets"]) == kept
        for b in ver["budgets"]:
            assert any(b["budget_ms"] == round(b["fraction"] * t, 3) for t in teachers), (b, teachers)
    else:  # none reachable by the table: one fallback ms budget, said in the log
        assert len(srch["budgets_ms"]) == 1 and not any(
            b.get("fraction_given", True) for b in srch["best"].values()
        )
    assert [b["budget_ms"] for b in ver["budgets"]] == srch["budgets_ms"]
    ft = json.loads((out / "finetuned" / folders[0].split("/")[-1] / "finetune_results.json").read_text())
    assert ft["config"]["kd_alpha"] == 0.5 and ft["config"]["teacher"]  # task KD on by default
    assert res["objective"] and all(o["source"] == "trained" for o in res["objective"].values())
    for png in ("score_vs_latency.png", "score_vs_flops.png", "search/pareto.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # a third run: everything cached
    logs.clear()
    run_pipeline(_tiny(tmp_path, tiny_teacher_dir), log=logs.append)
    assert all(f"[{s}] cached" in " ".join(logs) for s in ("train", "finetune", "report"))
    # a changed fine-tuning setting reruns from finetune on, not before
    logs.clear()
    run_pipeline(_tiny(tmp_path, tiny_teacher_dir, finetune={"max_steps": 4}), log=logs.append)
    text = " ".join(logs)
    assert "[measure] cached" in text and "[finetune] running" in text and "[report] running" in text


def test_first_layers_baseline_is_the_largest_k_that_fits():
    from autodistil.search.verify import choose_first_layers

    cuts = [
        {"name": f"teacher-first{k}", "layers": k, "measured_ms": ms, "margin_ms": 0.2}
        for k, ms in ((1, 6.0), (2, 11.0), (3, 16.5), (4, 21.0))
    ]
    got = {b: choose_first_layers(cuts, b)["chosen"] for b in (5.0, 11.0, 11.2, 17.0, 100.0)}
    # 11.0 measured + 0.2 margin does not meet 11.0 (the students' rule), meets 11.2
    assert [None if c is None else c["layers"] for c in got.values()] == [None, 1, 2, 3, 4]
    assert choose_first_layers(cuts, 5.0)["message"].startswith(
        "none fits: the closest, teacher-first1: measured 6.00 ms + margin 0.20 ms against 5 ms"
    )


def test_fractional_budget_is_judged_against_the_teacher_in_the_same_session():
    """The main run's case: budget 0.15x of the teacher timed at verification (42.67 ms -> 6.40 ms); in
    the report's session the machine ran 1.12x slower (teacher 47.66 ms) and the student 6.70 ms: over
    the ms figure, but 0.141x of the teacher timed beside it, within 0.15x. An explicit ms budget stays
    absolute, and a student slower than the fraction of the teacher next to it fails either way."""
    from autodistil.report import budget_holds

    assert budget_holds(6.70, 47.66, 6.40, fraction=0.15)
    assert not budget_holds(6.70, 47.66, 6.40, fraction=None)
    assert not budget_holds(7.40, 47.66, 6.40, fraction=0.15)  # 0.155x
    assert budget_holds(6.30, 47.66, 6.40, fraction=None)


def test_run_stage_versions_invalidate_later_markers(tmp_path, monkeypatch):
    """A stage whose output format changed (its _VERSIONS entry bumped) reruns with every later stage;
    earlier stages keep their cached markers."""
    import autodistil.pipeline as pl

    run = pl.Run(RunConfig(out_dir=str(tmp_path)))
    before = {s: run._hash(s) for s in pl.STAGES}
    monkeypatch.setitem(pl._VERSIONS, "search", pl._VERSIONS["search"] + 1)
    after = {s: run._hash(s) for s in pl.STAGES}
    i = pl.STAGES.index("search")
    assert all(before[s] == after[s] for s in pl.STAGES[:i])
    assert all(before[s] != after[s] for s in pl.STAGES[i:])


def test_default_profile_grid_keeps_the_cached_stages_of_its_explicit_grid(tmp_path):
    """profile_grid None stands for the device's default grid: a run folder made with that grid
    written out (the old default, 3 2 2 on CPU) keeps its cached stages; another grid reruns them."""
    import autodistil.pipeline as pl
    from autodistil.pipeline import ProfileConfig

    h = lambda **kw: pl.Run(RunConfig(out_dir=str(tmp_path), profile=ProfileConfig(**kw)))._hash("report")  # noqa
    assert h() == h(grid=(3, 2, 2))
    assert h() != h(grid=(3, 4, 2)) and h(device="cuda") == h(device="cuda", grid=(3, 4, 2))


def test_run_config_errors():
    with pytest.raises(ValueError, match="stop_after='nope' is not a stage"):
        RunConfig(stop_after="nope")
    with pytest.raises(ValueError, match="measure_rounds=1 must be >= 2"):
        RunConfig(measure_rounds=1)
    from autodistil.latency.profile import rounds_for

    assert rounds_for(2.5, 0.125) == 20 and rounds_for(2.5, 0.5) == 5 and rounds_for(0.1, 0.5) == 2


@pytest.mark.parametrize(
    "path,cls",
    [
        ("configs/paper.yaml", "autodistil.pipeline:RunConfig"),
        ("configs/paper_train.yaml", "autodistil.distill.train:TrainConfig"),
    ],
)
def test_shipped_configs_load(path, cls):
    """The config files the README points to are accepted by the dataclass they configure
    (unknown keys are refused, so a renamed field breaks them)."""
    import importlib

    from autodistil.config import build_dataclass
    from autodistil.io import load_config_file

    mod, name = cls.split(":")
    root = Path(__file__).resolve().parent.parent
    cfg = build_dataclass(getattr(importlib.import_module(mod), name), load_config_file(root / path))
    if name == "RunConfig":
        ft = cfg.finetune
        assert (ft.teacher_epochs, ft.epochs, ft.lr, cfg.train.steps) == (3, 3, 2e-5, 400000)
        assert (cfg.profile.batch, cfg.profile.dtype, cfg.profile.cuda_graphs) == (32, "bf16", True)


def test_latency_stat_reaches_the_profile_and_is_checked_against_a_given_table(tmp_path):
    """`run --latency-stat p90` profiles this machine for the 90th percentile (the profile section's stat is
    the run's, not a flag of its own); a table from the target profiled for another statistic is refused
    up front with one line; `search --latency-stat` must name the table's statistic."""
    import argparse
    from autodistil.cli import build_parser
    from autodistil.cli.search import check_latency_stat
    from autodistil.config import add_dataclass_args, build_dataclass
    import autodistil.pipeline as pl

    p = argparse.ArgumentParser()
    add_dataclass_args(p, RunConfig)
    flags = {o: a for a in p._actions for o in a.option_strings}
    assert "--latency-stat" in flags and "--profile-stat" not in flags and "--verify-rounds" in flags
    assert "median" in flags["--latency-stat"].help and "p90" in flags["--latency-stat"].help
    assert "the profile's batch, seq len and threads" in flags["--latency-ms"].help
    cfg = build_dataclass(RunConfig, {}, p.parse_args(["--latency-stat", "p90", "--verify-rounds", "2"]))
    run = pl.Run(cfg)
    assert run.profile_settings().stat == "p90" and cfg.search.verify_rounds == 2
    assert run._hash("profile") != pl.Run(RunConfig())._hash("profile")
    with pytest.raises(ValueError, match="set by the job itself"):
        build_dataclass(RunConfig, {"profile": {"stat": "p90"}})
    with pytest.raises(ValueError, match="stat 'mean' is not allowed"):
        build_dataclass(RunConfig, {"latency_stat": "mean"})
    with pytest.raises(ValueError, match="verify_rounds=0 must be >= 1"):
        build_dataclass(RunConfig, {"verify_rounds": 0})
    # a table profiled for the median, and a run or search on p90 budgets
    from autodistil.latency.predict import LatencyTable
    from autodistil.latency.profile import ProfileSettings, build_table
    from autodistil.preflight import check_table
    from autodistil.space import PAPER_SPACES

    sys.path.insert(0, str(Path(__file__).parent))
    from test_latency import SyntheticDevice

    spaces = [PAPER_SPACES["small"]]
    table = build_table(
        spaces,
        ProfileSettings(rounds=2, round_s=0.01),
        grid=(2, 2, 2),
        calibrate=0,
        device=SyntheticDevice(seed=0),
    )
    table.meta["teacher"] = {"name": "t", "ms": 40.0}
    path = table.save(tmp_path / "t.json")
    from autodistil.pipeline import SearchConfig

    run_cfg = RunConfig(table=str(path), search=SearchConfig(latency_stat="p90"))
    with pytest.raises(
        ValueError,
        match=r"predicts the median per call \(median\), the run's budgets "
        r"bound the 90th percentile",
    ):
        check_table(run_cfg, spaces, spaces[0].head_dim)
    assert check_table(RunConfig(table=str(path)), spaces, spaces[0].head_dim)["path"] == str(path)
    a = build_parser().parse_args(
        [
            "search",
            "--supernet",
            "x",
            "--table",
            str(path),
            "--latency-stat",
            "p90",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    with pytest.raises(ValueError, match="--latency-stat p90: the table .* predicts the median per call"):
        check_latency_stat(a)
    check_latency_stat(
        build_parser().parse_args(
            [
                "search",
                "--supernet",
                "x",
                "--table",
                str(path),
                "--latency-stat",
                "median",
                "--out",
                str(tmp_path / "s"),
            ]
        )
    )
    assert isinstance(LatencyTable.load(path), LatencyTable)


def test_few_fine_tuning_steps_are_warned_about():
    """956 examples, one epoch at batch 32: 30 optimizer steps, and every model predicted one class (the
    own-data run of docs/reports/2026-12-07-own-data-run.md). The run says so, naming the flags; not when
    the user capped the steps, nor for a teacher used as it is, nor at the embedded task's 322 steps."""
    from autodistil.pipeline import few_steps_warning

    w = few_steps_warning("the teacher", 30, 32, 1.0, None)
    assert w and "30 optimizer steps" in w and "--finetune-teacher-epochs" in w and "--finetune-epochs" in w
    assert few_steps_warning("s", 30, 32, 1.0, 3) is None  # max_steps given: the user's choice
    assert few_steps_warning("the teacher", 0, 32, 0.0, None) is None  # used as it is
    assert few_steps_warning("s", 322, 32, 1.0, None) is None
