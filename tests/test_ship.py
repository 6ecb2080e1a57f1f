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
