"""What a deployment team brings: its teacher, its labelled files and a device with a budget. The
README's quick start runs here as written (on a tiny teacher and short timings), a sentence-pair
dataset runs end to end, a table from another device drives the search, and every bad input fails
before the first stage with one line and no run folder."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline import TINY, _merge, tiny_config

from autodistil.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST_PROFILE = [
    "--rounds",
    "2",
    "--round-s",
    "0.02",
    "--calibrate",
    "2",
    "--grid",
    "2",
    "2",
    "2",
    "--seq-len",
    "32",
]


def quick_start_commands() -> list:
    """The README's quick-start commands, as argument lists (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quick-start:begin -->\n```bash\n(.*?)```\n<!-- quick-start:end -->", text, re.S)
    assert block, "README has no quick-start block"
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _cli(args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "autodistil.cli", *args], cwd=cwd, capture_output=True, text=True
    )
    assert r.returncode == 0, f"{args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory, tiny_teacher_dir):
    """Run the README's quick start in a fresh folder: `my-teacher/` is the tiny teacher, timings short,
    training tiny (a config file; the README's flags override it)."""
    work = tmp_path_factory.mktemp("quick")
    (work / "my-teacher").symlink_to(tiny_teacher_dir, target_is_directory=True)
    tiny = _merge(TINY, {"cache_dir": str(work / "cache")})
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    cmds = quick_start_commands()
    assert [c[:2] for c in cmds] == [
        ["autodistil", "profile"],
        ["autodistil", "example-data"],
        ["autodistil", "run"],
        ["autodistil", "measure"],
    ]
    out = {}
    for c in cmds:
        extra = {
            "profile": FAST_PROFILE + ["--space", "small", "--space", "base"],
            "run": ["--config", "tiny.yaml"],
            "measure": ["--rounds", "2"],
        }.get(c[1], [])
        out[c[1]] = _cli(c[1:] + extra, work)
    return work, out


@pytest.mark.slow
def test_quick_start_runs_and_names_what_to_ship(quick_start):
    """Own CSV files with their own column names and string labels, a table from the target, a budget in
    ms: students that hold it (by the target's table), a report naming the folders to ship, ONNX
    checked, and the target-side measurement judging each budget."""
    work, out = quick_start
    run = work / "runs" / "mine"
    report = (run / "report.md").read_text()
    res = json.loads((run / "results.json").read_text())
    manifest = json.loads((run / "ship" / "manifest.json").read_text())
    assert res["finetune"]["task"] == "debates-party" and res["models"][0]["metrics"].keys() == {
        "accuracy",
        "macro_f1",
    }
    assert manifest["budgets"] and all(b["budget_ms"] == 12 for b in manifest["budgets"])
    for b in manifest["budgets"]:
        folder = run / b["folder"]
        assert f"`{b['folder']}`" in report.split("## Latency budgets")[0]  # named under "What to ship"
        cfg = json.loads((folder / "config.json").read_text())
        assert set(cfg["id2label"].values()) == {"Democratic", "Moderator", "Republican"}
        assert (folder / "model.onnx").is_file() and manifest["students"][b["student"]]["onnx"][
            "max_rel_diff"
        ] < 1e-3
        assert b["student"] in res["search"].get("budgets_ms", []) or True
    # the table came from "the target": nothing measured here, the report says so and gives the command
    assert not res["latency_measured_here"] and "autodistil measure --table latency_table.json" in report
    assert json.loads((run / "stages" / "measure.json").read_text())["output"]["skipped"]
    # every chosen student is within its budget by the target's table, with the table's error margin
    for b in res["budgets"]:
        assert b["student"] and b["predicted_ms"] * (1 + res["verification"]["prediction_margin"]) <= 12
    # the shipped folders load as classifiers in a fresh process (AutoDistil class: after import autodistil)
    code = (
        "import sys, autodistil; from transformers import AutoModelForSequenceClassification as M\n"
        "for f in sys.argv[1:]: assert M.from_pretrained(f).config.num_labels == 3\nprint('ok')"
    )
    folders = [str(run / b["folder"]) for b in manifest["budgets"]]
    r = subprocess.run([sys.executable, "-c", code, *folders], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    # on the target: each budget judged against the teacher timed in the same rounds
    meas = json.loads((work / "measured.json").read_text())
    assert {b["student"] for b in meas["budgets"]} == {b["student"] for b in manifest["budgets"]}
    t_table = json.loads((work / "table.json").read_text())["meta"]["teacher"]["ms"]
    for b in meas["budgets"]:
        assert b["ms_at_table_speed"] == pytest.approx(b["measured_ms"] / b["teacher_ms_now"] * t_table)
        assert b["holds"] == (b["ms_at_table_speed"] <= 12) and b["verdict"] in out["measure"]


def _scaled_table(src: Path, dst: Path, k: float, device: str) -> dict:
    """Another device's table: every latency x k, another device name."""
    t = json.loads(src.read_text())
    t["key"]["device_name"] = device
    for r in t["rows"]:
        for f in (
            "slope_ms",
            "intercept_ms",
            "low_slope_ms",
            "low_intercept_ms",
            "slope_sd_ms",
            "intercept_sd_ms",
        ):
            if r.get(f) is not None:
                r[f] *= k
        r["depth_ms"] = [x * k for x in r["depth_ms"]]
    if t.get("correction"):
        t["correction"]["b"] *= k
    t["meta"]["teacher"]["ms"] *= k
    dst.write_text(json.dumps(t))
    return t


@pytest.mark.slow
def test_a_table_from_another_device_drives_the_search(quick_start):
    """The same run folder searched again on a table of a slower device: the budget now rules out the
    student the first table allowed, and the one chosen fits by the new table (train stays cached)."""
    from autodistil.latency.predict import LatencyTable
    from autodistil.space import SubnetConfig

    work, _ = quick_start
    run = work / "runs" / "mine"
    first = json.loads((run / "stages" / "search.json").read_text())["output"]
    label, b = next(iter(first["best"].items()))
    chosen1 = SubnetConfig(b["layers"], b["hidden"], b["ffn_ratio"], b["heads"])
    t1 = LatencyTable.load(work / "table.json")
    margin = first["prediction_margin"]
    # the budget table 1's choice just meets; the slower table's slowdown k sits (geometrically) between
    # what rules that choice out and what still lets the smallest candidate in, whatever this machine timed
    cands = json.loads((run / "search" / "search.json").read_text())["candidates"]
    lo = min(t1.predict(SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])) for r in cands)
    hi = t1.predict(chosen1)
    assert lo < hi * 0.9, "the first search chose (nearly) its smallest candidate: nothing left to test"
    budget = round(hi * (1 + margin), 3) * 1.001
    k = budget / ((1 + margin) * (lo * hi) ** 0.5)
    _scaled_table(work / "table.json", work / "slow.json", k, "a slower target")
    logs = []
    from autodistil.config import build_dataclass
    from autodistil.io import load_config_file
    from autodistil.pipeline import RunConfig, run_pipeline

    vals = _merge(
        load_config_file(work / "tiny.yaml"),
        {
            "out_dir": str(run),
            "teacher": str(work / "my-teacher"),
            "table": str(work / "slow.json"),
            "train_file": str(work / "data/debates-party/train.csv"),
            "dev_file": str(work / "data/debates-party/dev.csv"),
            "text_columns": ["statement"],
            "label_column": "party",
            "latency_ms": [budget],
            "stop_after": "search",
        },
    )
    run_pipeline(build_dataclass(RunConfig, vals), log=logs.append)
    assert "[train] cached" in " ".join(logs) and "[profile] running" in " ".join(logs)
    second = json.loads((run / "stages" / "search.json").read_text())["output"]
    t2 = LatencyTable.load(work / "slow.json")
    ch = next(iter(second["best"].values()))
    chosen2 = SubnetConfig(ch["layers"], ch["hidden"], ch["ffn_ratio"], ch["heads"])
    assert t2.predict(chosen1) * (1 + margin) > budget  # the first choice does not fit the slow device
    assert chosen2 != chosen1 and t2.predict(chosen2) * (1 + second["prediction_margin"]) <= budget
    assert "a slower target" in json.loads((run / "stages" / "profile.json").read_text())["output"]["device"]


@pytest.mark.slow
def test_sentence_pairs_end_to_end(tmp_path, tiny_teacher_dir):
    """A pair dataset in JSON lines with its own columns and string labels, profiled and measured on this
    machine: students fine-tuned on both texts, shipped with their label names."""
    from autodistil.data.examples import write_examples
    from autodistil.pipeline import run_pipeline

    paths = write_examples(tmp_path / "data")["debates-reply"]
    cfg = tiny_config(
        tmp_path,
        tiny_teacher_dir,
        train_file=str(paths["train"]),
        dev_file=str(paths["dev"]),
        text_columns=["first", "second"],
        label_column="relation",
        baselines=False,
        finetune={"max_seq_len": "auto"},
    )
    run_pipeline(cfg, log=lambda *_: None)
    out = tmp_path / "run"
    res = json.loads((out / "results.json").read_text())
    manifest = json.loads((out / "ship" / "manifest.json").read_text())
    assert res["finetune"]["task"] == "debates-reply" and set(res["models"][0]["metrics"]) == {
        "accuracy",
        "f1",
    }
    assert res["latency_measured_here"] and res["finetune"]["seq_len"]["auto"]["coverage"] >= 0.999
    ft = json.loads(
        (out / "finetuned" / manifest["budgets"][0]["student"] / "finetune_results.json").read_text()
    )
    assert ft["labels"] == ["elsewhere", "reply"] and ft["config"]["data"]["text_columns"] == [
        "first",
        "second",
    ]
    assert ft["max_seq_len"] == res["finetune"]["seq_len"]["max_seq_len"]
    for b in manifest["budgets"]:
        cfg = json.loads((out / b["folder"] / "config.json").read_text())
        assert cfg["id2label"] == {"0": "elsewhere", "1": "reply"}


# --- every bad input fails before the first stage, with one line and no run folder -------------------------
def _run_args(tmp_path, teacher, *extra):
    return ["run", "--out-dir", str(tmp_path / "out"), "--teacher", str(teacher), *extra]


def _csv(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "case",
    [
        "missing_teacher",
        "unsupported_family",
        "missing_column",
        "dev_label",
        "bad_fraction",
        "out_dir_is_file",
        "teacher_epochs_0",
        "table_spaces",
        "table_no_teacher",
        "hub_task",
    ],
)
def test_bad_inputs_fail_first_with_one_line_and_no_run_folder(case, tmp_path, tiny_teacher_dir, capsys):
    good_tr = _csv(tmp_path, "tr.csv", "text,label\na,x\nb,y\n")
    good_dv = _csv(tmp_path, "dv.csv", "text,label\nc,x\n")
    teacher = tiny_teacher_dir
    files = ["--train-file", good_tr, "--dev-file", good_dv]
    extra, msg = files, None
    if case == "missing_teacher":
        teacher, msg = tmp_path / "nope", "teacher 'nope' not found|nope"
    elif case == "unsupported_family":
        d = tmp_path / "gpt"
        d.mkdir()
        (d / "config.json").write_text(
            json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4})
        )
        teacher, msg = d, "gpt2"
    elif case == "missing_column":
        extra = ["--train-file", good_tr, "--dev-file", good_dv, "--text-columns", "review"]
        msg = r"tr\.csv: no column 'review' \(columns: text, label\); name it with --text-columns"
    elif case == "dev_label":
        extra = ["--train-file", good_tr, "--dev-file", _csv(tmp_path, "d2.csv", "text,label\nc,z\n")]
        msg = r"d2\.csv, line 2, column 'label': label 'z' never appears in the train file"
    elif case == "bad_fraction":
        extra, msg = (
            files + ["--budget-fractions", "2"],
            r"budget_fractions \[2.0\] must each be in \(0, 1.5\]",
        )
    elif case == "out_dir_is_file":
        (tmp_path / "out").write_text("x")
        msg = "exists and is not a folder"
    elif case == "teacher_epochs_0":
        extra, msg = (
            files + ["--finetune-teacher-epochs", "0"],
            "teacher_epochs 0 \\(no training\\) needs a teacher",
        )
    elif case in ("table_spaces", "table_no_teacher"):
        from autodistil.latency.predict import LatencyTable
        from autodistil.latency.profile import ProfileSettings, build_table
        from autodistil.space import Range, SearchSpace
        from test_latency import SyntheticDevice

        sp = SearchSpace("small", Range(1, 2, 1), Range(16, 32, 16), Range(2.0, 2.0, 0.5), Range(1, 2, 1), 16)
        st = ProfileSettings(rounds=2, round_s=0.001)
        t = build_table([sp], st, grid=(2, 2, 2), calibrate=0, device=SyntheticDevice())
        t.save(tmp_path / "t.json")
        extra = files + ["--table", str(tmp_path / "t.json")]
        msg = (
            "has none for subspace 'tiny', the run searches tiny: .*profile with the run's teacher and spaces"
            if case == "table_spaces"
            else "no teacher latency"
        )
        if case == "table_no_teacher":  # spaces that match the run's, but no teacher timed in the table
            from autodistil.preflight import check_teacher, run_spaces
            from autodistil.pipeline import RunConfig

            spaces = run_spaces(RunConfig(), check_teacher(str(teacher)).shape)
            t = build_table(spaces, st, grid=(2, 2, 2), calibrate=0, device=SyntheticDevice())
            t.save(tmp_path / "t.json")
            assert "teacher" not in LatencyTable.load(tmp_path / "t.json").meta
    elif case == "hub_task":
        extra, msg = ["--task", "mnli"], "GLUE task 'mnli' needs the Hugging Face hub"
    rc = main(_run_args(tmp_path, teacher, *extra))
    err = capsys.readouterr().err
    assert rc == 2 and re.search(msg, err), err
    assert len(err.strip().splitlines()) == 1, err
    if case != "out_dir_is_file":
        assert not (tmp_path / "out").exists()
