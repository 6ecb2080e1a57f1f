"""The GPU acceptance command and its pieces, checked without a GPU: gpu_check.sh starts and says
"no GPU", gpu_summary.py turns part outputs into the right verdicts, the benchmarks say "not
measured" without a GPU and run their code paths on the CPU, and nothing the GPU parts import
needs `datasets` or `deepspeed`."""

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import gpu_summary  # noqa: E402

HAS_GPU = torch.cuda.is_available()


# --- gpu_check.sh without a GPU -----------------------------------------------------------
def _run_check(tmp_path, path_dirs=(), python=None):
    env = {**os.environ, "PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])}
    if python:
        env["PYTHON"] = python
    out = tmp_path / "out"
    p = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    return p, out


def _fake_nvidia_smi(tmp_path, rc):
    d = tmp_path / f"bin{rc}"
    d.mkdir()
    f = d / "nvidia-smi"
    f.write_text(f"#!/bin/sh\necho 'GPU 0: Fake'\nexit {rc}\n")
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return d


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: run the check itself")
def test_gpu_check_says_no_gpu_without_nvidia_smi(tmp_path):
    p, out = _run_check(tmp_path)
    assert p.returncode == 0, p.stderr
    assert "no GPU" in p.stdout and "nvidia-smi not found" in p.stdout
    assert not out.exists()  # nothing half-written


def test_gpu_check_refuses_an_unknown_part_before_running_anything(tmp_path):
    env = {**os.environ, "GPU_CHECK_PARTS": "kernels bogus"}
    out = tmp_path / "out"
    p = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert p.returncode == 2 and "unknown part 'bogus'" in p.stderr and "kernels step latency" in p.stderr, (
        p.stderr
    )
    assert not out.exists()


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: run the check itself")
def test_gpu_check_runs_only_the_selected_parts(tmp_path):
    """GPU_CHECK_PARTS="facts": with a fake nvidia-smi and a Python that says CUDA is there (and runs
    the real summary), facts runs (recording which sources ran) and every other part is recorded as
    not run, build included; an earlier run's output in the folder is removed first."""
    fake = tmp_path / "fakepy"
    fake.write_text(
        f"#!/bin/sh\ncase \"$*\" in\n  *gpu_summary.py*) exec {sys.executable} \"$@\" ;;\n"
        f"esac\necho \"fake python $*\"\nexit 0\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(_fake_nvidia_smi(tmp_path, 0)), "/usr/bin", "/bin"]),
        "PYTHON": str(fake),
        "GPU_CHECK_PARTS": "facts",
        "GPU_CHECK_TOTAL_S": "60",
    }
    out = tmp_path / "out"
    out.mkdir()
    (out / "kernels_gpu.csv").write_text(
        "stale,from,an,earlier,run\n"
    )  # must not be summarised as this run's
    p = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    log = (out / "gpu_check.log").read_text()
    assert not (out / "kernels_gpu.csv").exists()
    assert "@@source " in log and "sha256 " in log
    assert json.loads((out / "summary.json").read_text())["source"].split(" sha256 ")[1]
    parts = {
        json.loads(line[len("@@part ") :])["name"]: json.loads(line[len("@@part ") :])
        for line in log.splitlines()
        if line.startswith("@@part ")
    }
    assert set(parts) == {"facts", "build", "imports", "tests", "kernels", "step", "latency"}, (
        p.stdout + p.stderr
    )
    assert parts["facts"]["rc"] == 0 and "skipped" not in parts["facts"]
    for name in ("build", "imports", "tests", "kernels", "step", "latency"):
        assert "not in GPU_CHECK_PARTS" in parts[name].get("skipped", ""), parts[name]
    assert "pip install" not in log and (out / "summary.json").is_file()


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: run the check itself")
def test_gpu_check_step_part_runs_the_graphed_step_within_its_box(tmp_path):
    """GPU_CHECK_PARTS="step" with a fake nvidia-smi and a Python that records what it is asked to run:
    the step part runs bench_supernet_step.py with the naive baseline, the graphed step (cuda and
    Triton backends) and the eager backends, with a budget inside its box; the whole check's default
    total fits 5 minutes."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fakepy"
    fake.write_text(
        f"#!/bin/sh\ncase \"$*\" in\n  *gpu_summary.py*) exec {sys.executable} \"$@\" ;;\n"
        f"esac\necho \"$*\" >> {calls}\nexit 0\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(_fake_nvidia_smi(tmp_path, 0)), "/usr/bin", "/bin"]),
        "PYTHON": str(fake),
        "GPU_CHECK_PARTS": "step",
    }
    env.pop("GPU_CHECK_TOTAL_S", None)
    out = tmp_path / "out"
    p = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    step = [c for c in calls.read_text().splitlines() if "bench_supernet_step.py" in c]
    assert len(step) == 1, p.stdout + p.stderr
    args = step[0].split()
    modes = args[args.index("--modes") + 1 :]
    assert modes[:2] == ["naive", "graphs_cuda"]
    assert {"graphs_triton", "cuda", "triton", "torch"} <= set(modes)
    log = (out / "gpu_check.log").read_text()
    rec = next(
        json.loads(line[len("@@part ") :])
        for line in log.splitlines()
        if line.startswith("@@part ") and '"step"' in line
    )
    budget = float(args[args.index("--budget-s") + 1])
    assert rec["rc"] == 0 and 0 < budget < rec["box_s"] <= 110, (rec, budget)
    script = (BENCH / "gpu_check.sh").read_text().splitlines()
    total = next(int(line.split(":-")[1].rstrip("}")) for line in script if line.startswith("TOTAL="))
    assert total <= 300


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: run the check itself")
def test_gpu_check_says_no_gpu_when_nvidia_smi_fails_or_torch_sees_none(tmp_path):
    p, _ = _run_check(tmp_path, [_fake_nvidia_smi(tmp_path, 9)])
    assert p.returncode == 0 and "no GPU: nvidia-smi sees no device" in p.stdout, p.stdout + p.stderr
    p, out = _run_check(tmp_path, [_fake_nvidia_smi(tmp_path, 0)], python=sys.executable)
    assert p.returncode == 0 and "torch.cuda.is_available() is False" in p.stdout, p.stdout + p.stderr
    assert not out.exists()


# --- gpu_summary.py on synthetic part outputs ----------------------------------------------------
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="{nfail}" skipped="1" tests="4">
<testcase classname="tests.test_kernels" name="test_sliced_linear[triton-bf16]" time="0.1"/>
<testcase classname="tests.test_kernels" name="test_attention[cuda-64]" time="0.1">{failure}</testcase>
<testcase classname="tests.test_kernels" name="test_attention_probs[cuda]" time="0.0">
  <skipped type="pytest.skip" message="needs a CUDA GPU"/></testcase>
<testcase classname="tests.test_cuda_backend.TestGemm" name="test_bias_gelu" time="0.2"/>
</testsuite></testsuites>
"""
FAILURE = '<failure message="AssertionError: dq max err 0.5 vs torch 0.01">trace</failure>'
K_HEAD = ["device_name", "op", "shape", "o", "i", "impl", "status", "ms_median", "note"]


def _kernel_rows(cuda_linear_ms=1.0, triton_attn_status="ok"):
    rows = []
    # linear: triton ratios 2.0 and 0.5 (geomean 1.0); cuda ratios 1/cuda_linear_ms at both shapes
    # one name may cover two sizes (a space's smallest and largest subnet): shapes are keyed by (name, o, i)
    for shape, o, ref, tri in (("tiny-qkv", 8, 1.0, 0.5), ("tiny-qkv", 16, 1.0, 2.0)):
        rows += [
            ["H100", "sliced_linear_fwd_bwd", shape, o, 8, "cublas_contiguous", "ok", ref, ""],
            ["H100", "sliced_linear_fwd_bwd", shape, o, 8, "torch_F.linear_on_slice", "ok", 2 * ref, ""],
            ["H100", "sliced_linear_fwd_bwd", shape, o, 8, "autodistil_triton", "ok", tri, ""],
            ["H100", "sliced_linear_fwd_bwd", shape, o, 8, "autodistil_cuda", "ok", cuda_linear_ms, ""],
        ]
    for h in (7, 12):
        rows += [
            [
                "H100",
                "attention_fwd_bwd",
                f"heads{h}-d64-T128",
                h,
                64,
                "torch_sdpa",
                "ok",
                1.0,
                "SDPA: efficient",
            ],
            [
                "H100",
                "attention_fwd_bwd",
                f"heads{h}-d64-T128",
                h,
                64,
                "autodistil_triton",
                triton_attn_status,
                1.0 / 0.85 if triton_attn_status == "ok" else "",
                "",
            ],
        ]
    return rows  # no CUDA attention rows: that backend "unavailable" in the log


def _write_outdir(
    d: Path,
    *,
    tests_fail=False,
    cuda_linear_ms=1.0,
    triton_step_mem=100.0,
    latency_pass=True,
    kernels_rc=0,
    triton_attn_status="ok",
):
    d.mkdir(parents=True, exist_ok=True)
    parts = [
        ("facts", 0),
        ("build", 0),
        ("imports", 0),
        ("tests", 1 if tests_fail else 0),
        ("kernels", kernels_rc),
        ("step", 0),
        ("latency", 0),
    ]
    log = [
        "===== [facts] =====",
        "@@facts "
        + json.dumps(
            {
                "device_name": "NVIDIA H100 80GB HBM3",
                "driver": "580",
                "cuda": "13.0",
                "torch": "2.11.0",
                "triton": "3.6.0",
            }
        ),
        "@@backends " + json.dumps({"torch": "ok", "triton": "ok", "cuda": "ok"}),
        "@@imports " + json.dumps({"ok": True, "modules": {"autodistil": "ok"}}),
    ]
    log += [
        "@@part " + json.dumps({"name": n, "box_s": 60, "seconds": 12.5, "rc": rc, "note": ""})
        for n, rc in parts
    ]
    (d / "gpu_check.log").write_text("\n".join(log) + "\n")
    (d / "junit.xml").write_text(JUNIT.format(nfail=int(tests_fail), failure=FAILURE if tests_fail else ""))
    with open(d / "kernels_gpu.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(K_HEAD)
        w.writerows(_kernel_rows(cuda_linear_ms, triton_attn_status))
    with open(d / "supernet_step_gpu.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["mode", "status", "tokens_per_s", "extra_peak_mb", "base_mb", "loss_step0"])
        w.writerows(
            [
                ["naive", "ok", 1000, 500, 2000, 5.0],
                ["torch", "ok", 1300, 200, 2000, 5.0],
                ["triton", "ok", 1500, triton_step_mem, 2000, 5.0],
                ["cuda", "ok", 1250, 150, 2000, 5.0],
            ]
        )
    (d / "latency_gpu.json").write_text(
        json.dumps({"checks": [{"name": "mape_base", "value": 2.1, "target": "<= 3%", "pass": latency_pass}]})
    )
    return d


def _targets(s):
    return {t["name"]: t for t in s["targets"]}


def test_summary_all_pass(tmp_path):
    s = gpu_summary.write_summary(_write_outdir(tmp_path / "ok"))
    t = _targets(s)
    assert t["linear_triton"]["value"] == pytest.approx(1.0) and t["linear_triton"]["verdict"] == "pass"
    assert t["linear_cuda"]["verdict"] == "pass"
    assert (
        t["attention_triton"]["value"] == pytest.approx(0.85) and t["attention_triton"]["verdict"] == "pass"
    )
    assert t["attention_cuda"]["verdict"] == "not measured"  # no rows for it
    assert t["step_torch"]["value"] == pytest.approx(1.3) and t["step_torch"]["verdict"] == "pass"
    assert t["latency_mape_base"]["verdict"] == "pass"
    assert s["tests"]["verdict"] == "pass"
    assert s["tests"]["files"]["tests/test_kernels.py"] == {
        "passed": 2,
        "failed": 0,
        "errors": 0,
        "skipped": 1,
        "verdict": "pass",
    }
    assert s["tests"]["files"]["tests/test_cuda_backend.py"]["verdict"] == "pass"
    assert s["overall"] == "incomplete"  # CUDA attention not measured
    md = (tmp_path / "ok" / "summary.md").read_text()
    assert (
        "NVIDIA H100" in md
        and "| tiny-qkv | 16 | 8 |" in md
        and json.loads((tmp_path / "ok" / "summary.json").read_text())
    )


def test_summary_failing_cases(tmp_path):
    s = gpu_summary.write_summary(
        _write_outdir(
            tmp_path / "bad",
            tests_fail=True,
            cuda_linear_ms=1.1,
            triton_step_mem=600.0,
            latency_pass=False,
            kernels_rc=124,
            triton_attn_status="error: RuntimeError: illegal memory access",
        )
    )
    t = _targets(s)
    assert (
        t["linear_cuda"]["value"] == pytest.approx(1 / 1.1, rel=1e-3)
        and t["linear_cuda"]["verdict"] == "fail"
    )
    assert t["linear_triton"]["verdict"] == "pass"
    assert (
        t["attention_triton"]["verdict"] == "fail"
        and "illegal memory access" in t["attention_triton"]["detail"]
    )
    assert (
        t["step_triton"]["value"] == pytest.approx(1.5) and t["step_triton"]["verdict"] == "fail"
    )  # more memory
    assert "NOT lower" in t["step_triton"]["detail"]
    assert t["latency_mape_base"]["verdict"] == "fail"
    assert s["tests"]["verdict"] == "fail"
    assert s["tests"]["files"]["tests/test_kernels.py"]["verdict"] == "fail"
    assert s["tests"]["failing"] == [
        "tests/test_kernels.py::test_attention[cuda-64] "
        "(failure: AssertionError: dq max err 0.5 vs torch 0.01)"
    ]
    kparts = {p["name"]: p for p in s["parts"]}
    assert kparts["kernels"]["status"].startswith("timed out")
    assert s["overall"] == "fail"
    assert "test_attention[cuda-64]" in (tmp_path / "bad" / "summary.md").read_text()


def test_summary_of_an_empty_outdir_says_not_run(tmp_path):
    s = gpu_summary.write_summary(tmp_path)
    assert s["overall"] == "incomplete" and s["tests"]["verdict"] == "not run"
    assert all(t["verdict"] == "not measured" for t in s["targets"])
    assert any(x.startswith("latency:") for x in s["not_run"])


def test_merge_junit_keeps_both_runs(tmp_path):
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    a.write_text(JUNIT.format(nfail=0, failure=""))
    b.write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="tests.test_cuda_attention" '
        'name="test_dq[64]"><error message="boom"/></testcase></testsuite></testsuites>'
    )
    gpu_summary.merge_junit(a, [b, tmp_path / "missing.xml"])
    r = gpu_summary.parse_junit(a)
    assert r["files"]["tests/test_kernels.py"]["passed"] == 2
    assert r["files"]["tests/test_cuda_attention.py"] == {
        "passed": 0,
        "failed": 0,
        "errors": 1,
        "skipped": 0,
        "verdict": "fail",
    }


# --- the benchmarks without a GPU ------------------------------------------------------------------
@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: run the benchmarks themselves")
def test_benchmarks_say_not_measured_without_gpu(capsys):
    import bench_kernels
    import bench_supernet_step

    assert bench_kernels.main([]) == 2
    assert "not measured" in capsys.readouterr().out
    assert bench_supernet_step.main([]) == 2
    assert "not measured" in capsys.readouterr().out


def test_kernel_shapes_fit_their_supernet_parameters():
    import bench_kernels

    shapes = bench_kernels.linear_shapes()
    assert len(shapes) == len({(o, i) for _, o, i in shapes}) == 24
    for name, o, i in shapes:
        O, I = bench_kernels._full_shape(name, name.split("-")[0])
        assert o <= O and i <= I, (name, o, i, O, I)
    assert len(bench_kernels._round_robin(bench_kernels._shapes_in_order())) == 24


def test_kernel_benchmark_code_paths_on_cpu(tmp_path):
    """A dry run (CPU, fp16 for the Triton interpreter, tiny sizes) of every GPU code path but the
    timer: the explicit cuBLAS reference on a ready copy and on a per-call cast, F.linear on the slice,
    ours under autocast (Triton with the bf16-shadow default and with "cast", each naming its chosen
    configs), SDPA with the same mask on the same head-split views; ours must match the references."""
    import bench_kernels

    out = tmp_path / "k.csv"
    assert (
        bench_kernels.main(
            [
                "--device",
                "cpu",
                "--dtype",
                "fp16",
                "--batch",
                "1",
                "--seq",
                "8",
                "--shapes",
                "tiny-qkv",
                "--max-shapes",
                "1",
                "--heads",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out)))
    got = {(r["op"], r["impl"]): r for r in rows}
    want = [
        ("sliced_linear_fwd_bwd", "cublas_contiguous"),
        ("sliced_linear_fwd_bwd", "cublas_cast_per_call"),
        ("sliced_linear_fwd_bwd", "torch_F.linear_on_slice"),
        ("attention_fwd_bwd", "torch_sdpa"),
    ]
    if bench_kernels.ops.backend_status()["triton"] == "ok":
        want += [
            ("sliced_linear_fwd_bwd", "autodistil_triton"),
            ("sliced_linear_fwd_bwd", "autodistil_triton_cast"),
            ("attention_fwd_bwd", "autodistil_triton"),
        ]
        for v, b_dtype in (("autodistil_triton", "float16"), ("autodistil_triton_cast", "float32")):
            cfg = got[("sliced_linear_fwd_bwd", v)]["triton_config"]
            assert cfg.startswith("fwd ") and "; dx " in cfg and "; dw " in cfg, cfg
            assert f"B:{b_dtype}" in cfg.split("; dw")[0] and "split" in cfg.split("; dw")[1], cfg
    for k in want:
        assert got[k]["status"] == "ok", (k, got[k]["status"])
        assert float(got[k]["ms_median"]) > 0
        if k[1].startswith("autodistil"):
            assert float(got[k]["max_abs_diff_vs_ref"]) < 5e-2, got[k]
    assert "SDPA backend with the bool mask" in got[("attention_fwd_bwd", "torch_sdpa")]["note"]


def test_supernet_step_cpu_smoke(tmp_path):
    """The real trainer's step on a tiny space: naive (the plain-slicing model), the torch backend and
    its graph-ready path run the same sandwich from the same snapshot, so their first losses agree
    (fp32 on CPU); every row has its memory columns (peak = base + own + extra); the graph mode's timed
    passes only replay (its warm-up captured every member)."""
    import bench_supernet_step

    out = tmp_path / "s.csv"
    rc = bench_supernet_step.main(
        [
            "--device",
            "cpu",
            "--space",
            "tiny",
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "1",
            "--repeats",
            "3",
            "--teacher-layers",
            "2",
            "--vocab",
            "2000",
            "--modes",
            "naive",
            "torch",
            "graphs_torch",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = {r["mode"]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"naive", "torch", "graphs_torch"}
    for r in rows.values():
        assert r["status"] == "ok" and float(r["tokens_per_s"]) > 0 and r["finite"] == "True"
        assert r["passes"] == "3"
        assert (
            float(r["tokens_per_s_slowest"]) <= float(r["tokens_per_s"]) <= float(r["tokens_per_s_fastest"])
        )
        assert r["sandwich_step0"] == rows["naive"]["sandwich_step0"]
        parts = float(r["base_mb"]) + float(r["own_mb"]) + float(r["extra_peak_mb"])
        assert float(r["peak_mb"]) == pytest.approx(parts, abs=0.15)
    for m in ("torch", "graphs_torch"):
        assert float(rows[m]["loss_step0"]) == pytest.approx(float(rows["naive"]["loss_step0"]), rel=1e-4)
    g = rows["graphs_torch"]
    assert g["cuda_graphs"] == "True" and int(g["member_graphs"]) == 4
    assert (g["last_pass_replayed"], g["last_pass_captured"], g["last_pass_eager"]) == ("4", "0", "0")


def test_step_modes_alternate_within_rounds():
    """Every round times one pass of every mode in turn; a failing mode leaves the rounds, the others
    go on; past the budget no new round starts (the first always runs)."""
    import types
    import bench_supernet_step as b

    ms = [b.Mode(n, {}) for n in ("naive", "graphs_cuda", "cuda")]
    order, failures = [], []

    def run(m):
        order.append(m.name)
        m.passes.append(0.1)
        if m.name == "cuda" and len(m.passes) == 2:
            raise RuntimeError("boom")

    lost = b.time_rounds(ms, 5, b.Budget(None), run, lambda m, e: failures.append((m.name, str(e))) and False)
    assert lost is None and failures == [("cuda", "boom")]
    assert order == ["naive", "graphs_cuda", "cuda"] * 2 + ["naive", "graphs_cuda"] * 3
    assert [m.name for m in ms] == ["naive", "graphs_cuda"]
    order.clear()
    b.time_rounds(ms, 5, types.SimpleNamespace(allows=lambda est: False), run, lambda m, e: False)
    assert order == ["naive", "graphs_cuda"]
    assert b.MODES[:2] == ("naive", "graphs_cuda") and "graphs_triton" in b.CUDA_DEFAULT


# --- no datasets / deepspeed on the GPU machine ------------------------------------------------------
def test_gpu_parts_import_without_datasets_and_deepspeed():
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    p = subprocess.run(
        [sys.executable, str(BENCH / "gpu_summary.py"), "--import-check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    line = next(l for l in p.stdout.splitlines() if l.startswith("@@imports "))
    r = json.loads(line.split(" ", 1)[1])
    assert p.returncode == 0 and r["ok"], r
    assert r["modules"]["autodistil.distill.train"] == "ok" and r["modules"]["bench_supernet_step"] == "ok"


def test_import_check_catches_a_blocked_import(tmp_path):
    (tmp_path / "uses_datasets.py").write_text("import os\nimport datasets\n")
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); "
        "import gpu_summary as g; print(json.dumps(g.import_check(modules=('uses_datasets',))))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(BENCH)], capture_output=True, text=True, timeout=120
    )
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert not r["ok"] and "datasets" in r["modules"]["uses_datasets"], r


def test_summary_judges_kernels_on_gpu_time_when_every_shape_has_it(tmp_path):
    """Small shapes are launch-bound when run eagerly: the ratio uses the CUDA-graph GPU time when
    both sides have it at every shape, and says so; with one shape missing it, the eager time."""
    head = ["op", "shape", "o", "i", "impl", "status", "ms_median", "gpu_ms_median"]
    rows = [
        ["sliced_linear_fwd_bwd", "base-qkv", 8, 8, "cublas_contiguous", "ok", 0.04, 0.02],
        ["sliced_linear_fwd_bwd", "base-qkv", 8, 8, "autodistil_triton", "ok", 0.20, 0.02],
        ["sliced_linear_fwd_bwd", "tiny-qkv", 4, 8, "cublas_contiguous", "ok", 0.04, 0.01],
        ["sliced_linear_fwd_bwd", "tiny-qkv", 4, 8, "autodistil_triton", "ok", 0.20, 0.01],
    ]
    for case, last_gpu in (("all", 0.01), ("one_missing", "")):
        d = tmp_path / case
        d.mkdir()
        rows[-1][-1] = last_gpu
        with open(d / "kernels_gpu.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([head, *rows])
        t = _targets(gpu_summary.summarize(d))["linear_triton"]
        if case == "all":
            assert t["value"] == pytest.approx(1.0) and t["verdict"] == "pass" and "GPU time" in t["detail"]
            assert "eager (launch-bound) 0.20x" in t["detail"]
        else:
            assert t["value"] == pytest.approx(0.2) and t["verdict"] == "fail" and "eager time" in t["detail"]


def test_host_overhead_bench_writes_every_case(tmp_path):
    import host_overhead

    out = tmp_path / "h.json"
    assert host_overhead.main(["--layers", "2", "--rounds", "2", "--calls", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    got = {(r["section"], r["autocast_bf16"], r["gelu"], r["mode"]) for r in res["rows"]}
    assert got == {
        ("ops", a, g, m) for a in (False, True) for g in (False, True) for m in ("naive", "torch")
    } | {("model", a, True, m) for a in (False, True) for m in ("naive", "torch")}
    assert all(r["x_naive"] == 1.0 for r in res["rows"] if r["mode"] == "naive")
    assert all(r["us_per_layer_median"] > 0 for r in res["rows"]) and res["autodistil_commit"]


def test_step_summary_with_partial_pass_columns():
    """A step CSV where naive has its fastest pass but not its slowest (an older or cut-off row):
    the verdict is given without the pass range instead of failing on the missing column."""
    rows = [
        {
            "mode": "naive",
            "status": "ok",
            "tokens_per_s": "100",
            "extra_peak_mb": "20",
            "tokens_per_s_fastest": "110",
            "tokens_per_s_slowest": "",
        },
        {
            "mode": "triton",
            "status": "ok",
            "tokens_per_s": "130",
            "extra_peak_mb": "10",
            "tokens_per_s_fastest": "140",
            "tokens_per_s_slowest": "120",
        },
    ]
    t = next(x for x in gpu_summary.step_targets(rows, {}) if x["name"] == "step_triton")
    assert t["verdict"] == "pass" and t["value"] == 1.3 and "passes:" not in t["detail"]
    rows[0]["tokens_per_s_slowest"] = "90"
    t = next(x for x in gpu_summary.step_targets(rows, {}) if x["name"] == "step_triton")
    assert "(passes: 1.09-1.56x)" in t["detail"]


def test_summary_judges_the_graphed_step_and_shows_its_columns(tmp_path):
    """A graph mode passes at >= 1.5x naive tokens/s with no higher peak (base + own + extra) and a
    GPU-busy share >= 60 %; a higher peak or a low share fails it; no busy share: not measured. The
    step table shows x naive, the peak's parts and the graphs' replays; the linear table the per-call
    cast cuBLAS and the Triton configs."""
    naive = {
        "mode": "naive",
        "status": "ok",
        "tokens_per_s": "1000",
        "step_s": "0.2",
        "base_mb": "2000",
        "own_mb": "0",
        "extra_peak_mb": "2000",
        "peak_mb": "4000",
        "gpu_busy_ms_per_step": "30",
        "gpu_busy_share": "0.15",
    }
    graphed = {
        "mode": "graphs_cuda",
        "status": "ok",
        "tokens_per_s": "2000",
        "step_s": "0.1",
        "base_mb": "2000",
        "own_mb": "1500",
        "extra_peak_mb": "100",
        "peak_mb": "3600",
        "gpu_busy_ms_per_step": "80",
        "gpu_busy_share": "0.8",
        "member_graphs": "6",
        "graph_pool_mb": "1400",
        "last_pass_replayed": "8",
        "last_pass_captured": "0",
        "last_pass_eager": "0",
    }

    def verdict(**kw):
        ts = {x["name"]: x for x in gpu_summary.graph_step_targets([naive, {**graphed, **kw}])}
        t = ts["step_graphs_cuda"]
        return t["verdict"], t["value"], t["detail"]

    v, val, detail = verdict()
    assert v == "pass" and val == 2.0 and "peak 3600 MiB (base 2000 + own 1500 + extra 100)" in detail
    assert "GPU busy 80% of the step" in detail and "replayed 8" in detail and "(no higher)" in detail
    assert verdict(peak_mb="4100")[0] == "fail" and "(HIGHER)" in verdict(peak_mb="4100")[2]
    assert verdict(gpu_busy_share="0.5")[0] == "fail"
    assert verdict(tokens_per_s="1400")[0] == "fail"
    assert verdict(gpu_busy_share="", gpu_busy_error="not profiled: time budget")[0] == "not measured"
    t = {x["name"]: x for x in gpu_summary.graph_step_targets([naive])}
    assert t["step_graphs_triton"]["verdict"] == "not measured"
    d = _write_outdir(tmp_path / "g")
    with open(d / "supernet_step_gpu.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in (naive, graphed) for k in r)))
        w.writeheader()
        w.writerows([naive, graphed])
    krows = list(csv.DictReader(open(d / "kernels_gpu.csv")))
    extra = []
    for r in krows:
        if r["impl"] == "cublas_contiguous":
            extra.append({**r, "impl": "cublas_cast_per_call", "ms_median": str(2 * float(r["ms_median"]))})
        if r["impl"] == "autodistil_triton":
            r["triton_config"] = "fwd 128x128x64 w8 s4 B:bfloat16; dw 64x64x64 w4 s4 B:bfloat16 split 4"
    with open(d / "kernels_gpu.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in krows + extra for k in r)))
        w.writeheader()
        w.writerows(krows + extra)
    s = gpu_summary.write_summary(d)
    assert {x["name"]: x for x in s["targets"]}["step_graphs_cuda"]["verdict"] == "pass"
    lin = {x["name"]: x for x in s["targets"]}["linear_triton"]
    assert "per-call cast of the fp32 master 2.00x" in lin["detail"]
    md = (d / "summary.md").read_text()
    assert "| graphs_cuda | ok | 2000 | 2.00x |" in md and "| 3600 (2000 + 1500 + 100) |" in md
    assert "6 graphs, pool 1400 MiB; last pass 8/0/0" in md
    assert "## Triton configs chosen per shape" in md and "fwd 128x128x64 w8 s4 B:bfloat16" in md
    assert "cuBLAS (cast per call)" in md


def test_gpu_busy_counts_overlapping_device_intervals_once():
    """The step's GPU busy time is the union of its device intervals: a plain sum counts a memcpy
    beside a kernel (or kernels on two streams) twice."""
    import common as b

    assert b.busy_us([]) == 0.0
    assert b.busy_us([(0, 10), (20, 25)]) == 15.0
    assert b.busy_us([(20, 25), (0, 10), (5, 12), (6, 7), (25, 30)]) == 22.0  # unsorted, nested, touching
    with pytest.raises(ValueError, match="ends before it starts"):
        b.busy_us([(5, 1)])

    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    evs = [_Ev(cpu, 0, 100), _Ev(gpu, 10, 30), _Ev(gpu, 20, 40), _Ev(cpu, 50, 60), _Ev(gpu, 70, 75)]
    assert b.device_intervals(evs) == [(10, 30), (20, 40), (70, 75)]
    assert b.busy_us(b.device_intervals(evs)) == 35.0  # the launching host ops (CPU) are not GPU time


class _Ev:  # the fields of torch.autograd.profiler_util.FunctionEvent the benches read
    def __init__(self, dev, s, e, name="k"):
        self.device_type, self.name = dev, name
        self.time_range = type("R", (), {"start": s, "end": e})()


def test_kernel_breakdown_groups_device_time_per_kernel_and_call():
    """Two profiled calls: each kernel's device time and launches per call, largest first, names
    without return type / template arguments; host events and their time are left out."""
    import common

    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    mm = "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>(T1::Params)"  # noqa: E501
    evs = [
        _Ev(cpu, 0, 500, "aten::addmm"),
        _Ev(gpu, 0, 30, mm),
        _Ev(gpu, 40, 50, "_mm_kernel"),
        _Ev(gpu, 100, 130, mm),
        _Ev(gpu, 140, 150, "_mm_kernel"),
        _Ev(gpu, 145, 147, "Memset (Device)"),
    ]
    got = common.kernel_breakdown(evs, calls=2)
    assert got == "cutlass::Kernel2 x1 30.0us; _mm_kernel x1 10.0us; Memset x0.5 1.0us; busy 40.0us", got
    assert common.kernel_breakdown(evs, calls=2, top=1).startswith(
        "cutlass::Kernel2 x1 30.0us; +2 more 11.0us;"
    )
    assert common._kernel_label("x" * 80).endswith("~") and len(common._kernel_label("x" * 80)) == 48


def test_summary_lists_the_kernel_breakdowns(tmp_path):
    d = _write_outdir(tmp_path / "k")
    rows = list(csv.DictReader(open(d / "kernels_gpu.csv")))
    rows[0]["kernels"] = "_mm_kernel x3 40.0us; busy 40.0us"
    with open(d / "kernels_gpu.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    gpu_summary.write_summary(d)
    md = (d / "summary.md").read_text()
    assert "## Where the GPU time goes" in md
    assert f"| {rows[0]['impl']} | _mm_kernel x3 40.0us; busy 40.0us |" in md


def test_step_summary_reports_gpu_busy_share(tmp_path):
    rows = [
        {
            "mode": "naive",
            "status": "ok",
            "tokens_per_s": "100",
            "extra_peak_mb": "20",
            "step_s": "0.2",
            "gpu_busy_ms_per_step": "40",
            "gpu_busy_share": "0.2",
        },
        {
            "mode": "triton",
            "status": "ok",
            "tokens_per_s": "130",
            "extra_peak_mb": "10",
            "step_s": "0.154",
            "gpu_busy_ms_per_step": "41.5",
            "gpu_busy_share": "0.269",
        },
        {
            "mode": "cuda",
            "status": "ok",
            "tokens_per_s": "90",
            "extra_peak_mb": "10",
            "step_s": "0.22",
            "gpu_busy_error": "RuntimeError: CUPTI unavailable",
        },
    ]
    t = {x["name"]: x for x in gpu_summary.step_targets(rows, {})}
    assert (
        "GPU busy per step 41.5 of 154.0 ms (0.27) vs naive 40.0 of 200.0 ms (0.20)"
        in t["step_triton"]["detail"]
    )
    assert "GPU busy" not in t["step_cuda"]["detail"]
    with open(tmp_path / "supernet_step_gpu.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    md = gpu_summary.to_markdown(gpu_summary.summarize(tmp_path))
    assert "| 41.5 of 154.0 ms (0.27) |" in md and "| RuntimeError: CUPTI unavailable |" in md


def test_step_profiled_passes_fill_rows_and_report_failures(monkeypatch):
    """The profiled passes (run once every mode is timed) put the GPU's busy time and its share of
    the mode's step into each row; a pass with no device event is an error, not an idle GPU; past
    the budget a row says it was not profiled."""
    import argparse
    import types
    import bench_supernet_step as b

    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    traces = {
        "naive": [_Ev(cpu, 0, 900), _Ev(gpu, 0, 30_000), _Ev(gpu, 40_000, 90_000)],
        "cuda": [_Ev(cpu, 0, 900)],
    }
    seen = []

    def fake_profile(fn, calls):
        fn()
        return traces[seen[-1]]

    monkeypatch.setattr(b, "profile_cuda", fake_profile)
    monkeypatch.setattr(b, "_restore", lambda tr, snap: None)
    monkeypatch.setattr(b, "cuda_context_ok", lambda: True)
    model = types.SimpleNamespace(backend="torch")
    tr = types.SimpleNamespace(model=model, step=7, train_step=lambda: None, graphs=None)
    a = argparse.Namespace(steps=2)
    rows = [{"mode": "naive", "step_s": "0.2"}, {"mode": "cuda", "step_s": "0.25"}]
    real = b.gpu_busy
    monkeypatch.setattr(
        b,
        "gpu_busy",
        lambda tr, mode, snap, a, graphs=None: (seen.append(mode), real(tr, mode, snap, a, graphs))[1],
    )
    monkeypatch.setattr(b, "plain_model", lambda m: m)
    saves = []
    b.profile_modes(tr, None, a, rows, b.Budget(None), lambda: saves.append(1))
    assert rows[0]["gpu_busy_ms_per_step"] == 40.0 and rows[0]["gpu_busy_share"] == 0.2  # 80 ms over 2 steps
    assert "no device events" in rows[1]["gpu_busy_error"] and "gpu_busy_share" not in rows[1]
    assert len(saves) == 2 and model.backend == "torch" and tr.step == 0
    late = [{"mode": "naive", "step_s": "0.2"}]
    b.profile_modes(tr, None, a, late, types.SimpleNamespace(allows=lambda est: False), lambda: None)
    assert late[0]["gpu_busy_error"] == "not profiled: time budget"


def test_kernel_breakdowns_run_after_timing_and_say_when_empty(monkeypatch):
    """Rows queued by _measure get their `kernels` breakdown from profile_pending (after all timing):
    a trace without device events says so; past the budget, 'not profiled'."""
    import types
    import bench_kernels as bk

    gpu = torch.autograd.DeviceType.CUDA
    traces = iter([[_Ev(gpu, 0, 12, "void _mm_kernel<1>(int)")], []])
    ran = []
    monkeypatch.setattr(bk, "profile_cuda", lambda fn: (fn(), next(traces))[1])
    r1, r2, r3 = {"impl": "a", "shape": "s"}, {"impl": "b", "shape": "s"}, {"impl": "c", "shape": "s"}
    bk.PENDING[:] = [(r1, lambda: ran.append(1)), (r2, lambda: ran.append(2))]
    saves = []
    bk.profile_pending(bk.Budget(None), lambda: saves.append(1))
    assert (
        r1["kernels"] == "_mm_kernel x1 12.0us; busy 12.0us"
        and r2["kernels"] == "profile failed: no device events"
    )
    assert ran == [1, 2] and len(saves) == 2 and not bk.PENDING
    bk.PENDING[:] = [(r3, lambda: ran.append(3))]
    bk.profile_pending(types.SimpleNamespace(allows=lambda est: False), lambda: None)
    assert r3["kernels"] == "not profiled: time budget" and ran == [1, 2] and not bk.PENDING
