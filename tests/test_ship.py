"""What to ship: the fine-tuned classifier as ONNX checked against torch (every family's inputs), and the
target-side verdict of each shipped budget against the teacher timed in the same rounds."""

import json

import pytest
import torch
import transformers

from autodistil.ship import export_classifier_onnx, judge_budgets, shipped_folders

TEXTS = [["the cat sat on the mat .", "a", "stocks rose on wall street"], ["yes", "no", "maybe so"]]


@pytest.mark.parametrize("family", ["bert", "distilbert", "autodistil-distilbert"])
def test_classifier_onnx_matches_torch_for_each_family(tmp_path, tokenizer, family):
    """A student of a family without token types (DistilBERT conventions in the AutoDistil class) takes
    token_type_ids in forward but its graph has no such input: the check feeds a graph only the inputs
    it has."""
    from autodistil.hf_student import AutoDistilBertConfig

    torch.manual_seed(0)
    if family == "bert":
        cfg = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    elif family == "distilbert":
        cfg = transformers.DistilBertConfig(
            vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3
        )
    else:
        cfg = AutoDistilBertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=3,
            attention_head_size=16,
            intermediate_size=64,
            type_vocab_size=0,
            family="distilbert",
            pooler=False,
            num_labels=3,
        )
    m = transformers.AutoModelForSequenceClassification.from_config(cfg)
    m.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    check = export_classifier_onnx(tmp_path, TEXTS, seq_len=16)
    assert (tmp_path / "model.onnx").is_file() and check["max_rel_diff"] < 1e-3 and check["examples"] == 3
    assert ("token_type_ids" in check["inputs"]) == (family == "bert")
    assert (tmp_path / "model.onnx").stat().st_size > 1000


def test_profile_runner_draws_token_ids_inside_the_models_vocabulary():
    """A teacher with a small vocabulary (400 ids) is timed, not refused with an index error."""
    from autodistil.latency.profile import ProfileSettings, make_runner

    cfg = transformers.BertConfig(
        vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    make_runner(transformers.BertModel(cfg).eval(), ProfileSettings(seq_len=8))()


class _Table:
    meta = {"teacher": {"ms": 10.0}}


def test_budgets_are_judged_against_the_teacher_in_the_same_rounds():
    """The target ran 1.5x slower than when it was profiled (teacher 15 ms now, 10 ms in the table): a
    student at 6.6 ms now is 0.44x the teacher, 4.4 ms at the table's speed: within a 5 ms budget that
    its plain 6.6 ms would fail; a fraction budget is judged on the ratio alone."""
    manifest = {
        "budgets": [
            {"budget": "a", "budget_ms": 5.0, "fraction": None, "student": "s"},
            {"budget": "b", "budget_ms": 4.0, "fraction": 0.4, "student": "s"},
            {"budget": "c", "budget_ms": 4.0, "fraction": None, "student": "s"},
        ]
    }
    res = {"models": {"teacher": {"ms": 15.0, "noise_sd_ms": 0.1}, "s": {"ms": 6.6, "noise_sd_ms": 0.05}}}
    a, b, c = judge_budgets(manifest, res, _Table())
    assert (
        a["ms_at_table_speed"] == pytest.approx(4.4)
        and a["holds"]
        and "holds: 4.400 ms at the table" in a["verdict"]
    )
    assert not b["holds"] and b["vs_teacher"] == pytest.approx(0.44)
    assert not c["holds"] and "DOES NOT hold" in c["verdict"]


def test_shipped_folders_must_be_complete(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"students": {"s": {}}, "budgets": []}))
    with pytest.raises(
        FileNotFoundError, match="shipped student folder missing: .*s \\(copy the whole ship/"
    ):
        shipped_folders(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.json").write_text("{}")
    assert shipped_folders(tmp_path)[1] == {"s": str(tmp_path / "s")}


def _ship_table(tmp_path, stat: str, teacher_ms: float = 10.0):
    """A latency table (synthetic device) profiled for `stat`, with the teacher's latency."""
    from autodistil.latency.profile import ProfileSettings, build_table
    from autodistil.space import Range, SearchSpace
    from test_latency import SyntheticDevice

    sp = SearchSpace("s", Range(1, 3, 1), Range(64, 128, 32), Range(2.0, 3.0, 1.0), Range(2, 4, 1), 32)
    table = build_table(
        [sp],
        ProfileSettings(rounds=2, round_s=0.05, stat=stat),
        grid=(2, 2, 2),
        calibrate=0,
        device=SyntheticDevice(seed=3),
    )
    table.meta["teacher"] = {"name": "t", "ms": teacher_ms}
    return table.save(tmp_path / f"table-{stat}.json")


def test_ship_manifest_records_the_statistic_the_budgets_bound(tmp_path):
    """ship/manifest.json names the latency statistic (and the low percentile) of the run's table."""
    from types import SimpleNamespace

    from autodistil.ship import ship_students

    path = _ship_table(tmp_path, "p90")
    run = SimpleNamespace(
        out=tmp_path / "run",
        foreign_table=False,
        cfg=SimpleNamespace(
            onnx=False, profile=SimpleNamespace(seq_len=8), search=SimpleNamespace(latency_stat="p90")
        ),
        state={
            "profile": {"table": str(path)},
            "export": {"students": {}},
            "finetune": {"teacher": {"task": "sst2"}},
            "search": {"best": {}},
        },
    )
    manifest = ship_students(run)
    assert manifest["latency_stat"] == "p90" and manifest["latency_low_pct"] == 10.0
    assert json.loads((tmp_path / "run" / "ship" / "manifest.json").read_text())["latency_stat"] == "p90"


def test_measure_ship_refuses_a_table_for_another_statistic(tmp_path, monkeypatch, capsys):
    """`measure --ship` judges budgets on the statistic they bound: a table profiled for another one is
    refused before anything is timed (a manifest without latency_stat, from an older run: the median);
    names of one statistic agree (p90 and p090); every printed figure says which statistic it is."""
    from autodistil import cli
    from autodistil.latency import validate

    ship, teacher = tmp_path / "ship", tmp_path / "teacher"
    for d in (ship / "s", teacher):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    budgets = [{"budget": "latency<=5ms", "budget_ms": 5.0, "fraction": None, "student": "s"}]

    def manifest(**kw):
        (ship / "manifest.json").write_text(json.dumps({"students": {"s": {}}, "budgets": budgets, **kw}))

    timed = []

    def fake_measure(folders, table, settings, seed=0):
        timed.append(sorted(folders))
        m = lambda ms: {"ms": ms, "noise_sd_ms": 0.05, "low_ms": 0.9 * ms}  # noqa: E731
        return {"models": {"s": m(6.6), "teacher": m(15.0)}, "drift": 1.0, "threads": {"loadavg": None}}

    monkeypatch.setattr(validate, "measure_folders", fake_measure)
    t90, t50 = _ship_table(tmp_path, "p90"), _ship_table(tmp_path, "median")
    out = tmp_path / "m.json"

    def measure(table):
        argv = ["measure", "--table", str(table), "--ship", str(ship), "--teacher", str(teacher)]
        return cli.main([*argv, "--out", str(out)])

    manifest()  # an older run's manifest: median budgets
    assert measure(t90) == 2 and not timed
    err = capsys.readouterr().err
    assert (
        "the shipped budgets bound the median per call (manifest latency_stat median), the table "
        "predicts the 90th percentile (p90)" in err
    ), err
    assert measure(t50) == 0 and timed == [["s", "teacher"]]
    o = capsys.readouterr().out
    assert "s: median 6.600 ms (noise sd 0.050 ms, low p10 5.940 ms)" in o and "teacher: median 15.000" in o
    assert "(measured median 6.600 ms now)" in o and json.loads(out.read_text())["stat"] == "median"
    manifest(latency_stat="p090")
    assert measure(t50) == 2 and len(timed) == 1
    assert "bound the 90th percentile per call (manifest latency_stat p090)" in capsys.readouterr().err
    assert measure(t90) == 0 and len(timed) == 2
    o = capsys.readouterr().out
    assert "s: p90 6.600 ms" in o and "teacher: p90 15.000 ms" in o and "(measured p90 6.600 ms now)" in o
    assert "holds: 4.400 ms at the table's speed" in o
