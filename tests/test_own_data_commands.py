"""Own labelled files everywhere a task is taken: `finetune`, `evaluate`, `search --objective proxy`,
and a teacher that is already fine-tuned on them (used as it is)."""

import json

import pytest

from autodistil.cli import main
from autodistil.data.tasks import DataConfig


@pytest.fixture(scope="module")
def party_files(tmp_path_factory):
    """Small files of the example party task (own columns, three string labels)."""
    from autodistil.data.examples import write_examples

    d = tmp_path_factory.mktemp("party")
    p = write_examples(d)["debates-party"]
    small = {}
    for split, n in (("train", 60), ("dev", 30)):
        lines = p[split].read_text().splitlines(keepends=True)
        small[split] = d / f"small-{split}.csv"
        small[split].write_text("".join(lines[: n + 1]))
    return small


def _data_flags(files):
    return [
        "--train-file",
        str(files["train"]),
        "--dev-file",
        str(files["dev"]),
        "--text-columns",
        "statement",
        "--label-column",
        "party",
    ]


def test_finetune_and_evaluate_commands_on_own_files(tmp_path, tiny_teacher_dir, party_files, capsys):
    out = tmp_path / "ft"
    rc = main(
        [
            "finetune",
            "--model",
            str(tiny_teacher_dir),
            "--out-dir",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--max-seq-len",
            "auto",
            *_data_flags(party_files),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "small-train: accuracy" in text and "macro_f1" in text
    r = json.loads((out / "finetune_results.json").read_text())
    assert r["labels"] == ["Democratic", "Moderator", "Republican"] and r["max_seq_len_auto"]["auto"]
    assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "Republican"
    rc = main(["evaluate", "--model", str(out), *_data_flags(party_files)])
    text = capsys.readouterr().out
    assert rc == 0 and f"accuracy {r['metrics']['accuracy']:.4f}" in text and "30 dev examples" in text
    # the folder's head does not fit another task: one line, exit 2
    rc = main(["evaluate", "--model", str(out), "--task", "sentiment"])
    err = capsys.readouterr().err
    assert rc == 2 and "has 3 label(s), the task 'sentiment' needs 2" in err


def test_already_finetuned_teacher_is_used_as_it_is(tmp_path, tiny_teacher_dir, party_files, monkeypatch):
    """A teacher folder whose classification head has the task's labels is evaluated, not trained; one
    whose labels differ is fine-tuned."""
    from autodistil.finetune import train as ft
    from autodistil.finetune.teacher import finetuned_teacher

    data = DataConfig(
        train_file=str(party_files["train"]),
        dev_file=str(party_files["dev"]),
        text_columns=("statement",),
        label_column="party",
    )
    cls = tmp_path / "cls"
    ft.finetune(
        ft.FinetuneConfig(
            model=str(tiny_teacher_dir),
            data=data,
            out_dir=str(cls),
            max_steps=2,
            batch_size=8,
            max_seq_len=32,
        ),
        progress=False,
    )

    def boom(cfg, **k):
        raise AssertionError("an already fine-tuned teacher was trained")

    monkeypatch.setattr(ft, "finetune", boom)
    kw = dict(
        lr=1e-3,
        epochs=0,
        batch_size=8,
        max_seq_len=32,
        seed=0,
        cache_root=tmp_path / "cache",
        progress=False,
        log=lambda *_: None,
    )
    folder, r = finetuned_teacher(str(cls), data, **kw)
    assert folder == cls and r["as_is"] and r["steps"] == 0 and 0 <= r["score"] <= 1
    # labels named otherwise: not the task's head -> with epochs 0 that is an error, else it trains
    cfg = json.loads((cls / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b", "2": "c"}
    (cls / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match="teacher_epochs 0 \\(no training\\) needs a teacher already fine-tuned"
    ):
        finetuned_teacher(str(cls), data, **kw)
    with pytest.raises(AssertionError, match="was trained"):
        finetuned_teacher(str(cls), data, **{**kw, "epochs": 1})


def test_proxy_search_on_own_files(tmp_path, tiny_teacher_dir, party_files, capsys):
    from autodistil.distill.train import TrainConfig, train_supernets

    train_supernets(
        TrainConfig(
            teacher=str(tiny_teacher_dir),
            out_dir=str(tmp_path / "sn"),
            spaces=("small",),
            steps=1,
            batch_size=2,
            seq_len=32,
            max_train_blocks=8,
            eval_blocks=2,
        )
    )
    rc = main(
        [
            "search",
            "--supernet",
            str(tmp_path / "sn" / "small"),
            "--objective",
            "proxy",
            "--flops",
            "10",
            "--top-k",
            "1",
            "--proxy-steps",
            "2",
            "--heldout-blocks",
            "2",
            "--seq-len",
            "32",
            "--out",
            str(tmp_path / "proxy"),
            *_data_flags(party_files),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "proxy" / "proxy_search.json").read_text())
    assert res["task"] == "small-train" and len(res["candidates"]) == 1
    assert 0 <= res["candidates"][0]["proxy_score"] <= 1
