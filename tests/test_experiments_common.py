"""experiments/common.py: a run folder's recorded config read in both forms (flat, as older versions
wrote it, and in sections), its stages loaded from their markers, and a chosen set of its models
fine-tuned with the run's recipe (the fine-tuning itself stubbed)."""

import json
from pathlib import Path

import pytest

from autodistil.pipeline import STAGES, Run, RunConfig
from experiments import common
from experiments.common import RESULTS

BENCH_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def test_flat_config_of_a_recorded_run_maps_into_sections():
    flat = json.loads((BENCH_RESULTS / "2026-11-26_main_run" / "results.json").read_text())["config"]
    assert common.is_flat(flat)
    c = common.run_config_from_dict(flat)
    ft, tr, pr = c.finetune, c.train, c.profile
    assert (ft.lr, ft.epochs, ft.max_seq_len, ft.kd_alpha) == (3e-4, 1.0, 64, 0.5)
    assert (ft.batch_size, ft.teacher_lr, c.data.name) == (32, 5e-5, "sentiment")
    assert (tr.steps, tr.batch_size, tr.seq_len, tr.max_train_blocks) == (100, 8, 128, 2000)
    assert (pr.rounds, pr.round_s, pr.grid, pr.device) == (3, 0.5, (3, 2, 2), "cpu")
    assert (c.search.budget_fractions, c.search.method, c.search.verify_top) == ((0.15, 0.3), "auto", 4)
    with pytest.raises(ValueError, match="unknown option"):
        common.run_config_from_dict({**flat, "student_warmup": 3})


def test_sectioned_config_round_trips():
    from dataclasses import replace

    base = RunConfig()
    c = replace(
        base,
        seed=3,
        train=replace(base.train, steps=7),
        profile=replace(base.profile, grid=(2, 2, 2)),
        search=replace(base.search, budget_fractions=(0.5,)),
        finetune=replace(base.finetune, lr=1e-3),
    )
    d = json.loads(json.dumps(c.to_dict()))  # as results.json holds it
    assert not common.is_flat(d) and common.run_config_from_dict(d) == c


def _fake_run(tmp_path, cfg_dict, outputs, hashes=None):
    run_dir = tmp_path / "run"
    (run_dir / "stages").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"config": cfg_dict}))
    for stage, out in outputs.items():
        marker = {"stage": stage, "seconds": 1.0, "output": out, "hash": (hashes or {}).get(stage, "old")}
        (run_dir / "stages" / f"{stage}.json").write_text(json.dumps(marker))
    return run_dir


def test_load_run_takes_a_flat_runs_markers_as_they_are(tmp_path):
    flat = json.loads((BENCH_RESULTS / "2026-11-26_main_run" / "results.json").read_text())["config"]
    outs = {s: {"stage": s} for s in STAGES[: STAGES.index("measure") + 1]}
    outs["finetune"] = {"_seq_len": {"max_seq_len": 48}, "teacher": {"folder": str(tmp_path), "score": 0.8}}
    run = common.load_run(_fake_run(tmp_path, flat, outs))
    assert run.flat_config and run.state["search"] == {"stage": "search"}
    assert run.out == (tmp_path / "run").absolute()
    assert common.run_seq_len(run) == 48
    assert common.run_teacher(run) == (str(tmp_path), outs["finetune"]["teacher"])
    del outs["measure"], outs["finetune"]
    with pytest.raises(RuntimeError, match="stage 'measure' .* is missing"):
        common.load_run(_fake_run(tmp_path / "b", flat, outs))


def test_load_run_refuses_a_stale_stage_of_a_sectioned_run(tmp_path):
    (tmp_path / "t").mkdir()  # a teacher folder without config.json: its identity is its name
    cfg = RunConfig(teacher=str(tmp_path / "t"), out_dir=str(tmp_path / "run"))
    stages = STAGES[: STAGES.index("measure") + 1]
    hashes = {s: Run(cfg)._hash(s) for s in stages}
    d = json.loads(json.dumps(cfg.to_dict()))
    run = common.load_run(_fake_run(tmp_path, d, {s: {"stage": s} for s in stages}, hashes))
    assert not run.flat_config and run.state["export"] == {"stage": "export"}
    with pytest.raises(RuntimeError, match="stage 'search' .* is stale"):
        stale = {**hashes, "search": "x"}
        common.load_run(_fake_run(tmp_path / "b", d, {s: {"stage": s} for s in stages}, stale))


def test_finetune_models_uses_the_runs_recipe_and_overrides(tmp_path, monkeypatch):
    import autodistil.finetune.train as ft_train

    flat = json.loads((BENCH_RESULTS / "2026-11-26_main_run" / "results.json").read_text())["config"]
    run = Run(common.run_config_from_dict(flat))
    for name in ("student", "teacher"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    seen = []

    def fake_finetune(fc, extra=None, **kw):
        seen.append(fc)
        return {"headline": "accuracy", "score": 0.75, "steps": 3, "train_seconds": 1.0, "config": {}}

    monkeypatch.setattr(ft_train, "finetune", fake_finetune)
    out = common.finetune_models(
        run,
        {"s": tmp_path / "student"},
        2,
        tmp_path / "ft",
        tmp_path / "teacher",
        64,
        log=lambda m: None,
        lr=1e-3,
    )
    fc = seen[0]
    assert out["s"]["score"] == 0.75 and fc.out_dir == str(tmp_path / "ft" / "s")
    assert (fc.lr, fc.epochs, fc.kd_alpha, fc.seed) == (1e-3, 1.0, 0.5, 2)
    assert (fc.max_seq_len, fc.batch_size) == (64, 32)
    assert fc.teacher == str(tmp_path / "teacher") and fc.data.name == "sentiment"


def test_dated_results_folders():
    assert common.dated("x", "2026-01-02") == RESULTS / "2026-01-02_x"
    names = [p.name for p in (*RESULTS.iterdir(), *BENCH_RESULTS.iterdir()) if p.is_dir()]
    bad = [n for n in names if not (len(n) > 11 and n[:10].replace("-", "").isdigit() and n[10] == "_")]
    assert not bad, f"results folders must be named YYYY-MM-DD_topic: {bad}"
