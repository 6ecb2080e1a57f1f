"""Labelled data: the embedded task, GLUE offline, and the user's own files (CSV, TSV, JSON lines; their
column names and labels), with one-line errors naming the file, the line and the column."""

import json

import numpy as np
import pytest

from autodistil.data.tasks import (
    GLUE,
    SENTIMENT,
    DataConfig,
    DataError,
    TaskSpec,
    compute_metrics,
    covering_length,
    data_identity,
    film_in_dev,
    load_data,
    load_sentiment,
    load_task,
)


def test_sentiment_task_split_by_film():
    ds = load_sentiment()
    n = len(ds["train"]) + len(ds["validation"])
    assert n == 7403 + 5405
    assert sum(ds["train"]["label"]) + sum(ds["validation"]["label"]) == 7403
    films_train, films_dev = set(ds["train"]["movie_name"]), set(ds["validation"]["movie_name"])
    assert not films_train & films_dev and all(film_in_dev(f) for f in films_dev)
    assert 0.12 < len(ds["validation"]) / n < 0.28


def test_glue_without_the_hub_is_an_error_naming_the_ways_out():
    """No silent swap: a hub task with no hub fails, naming local files and the embedded task."""
    with pytest.raises(
        ConnectionError,
        match=r"GLUE task 'mrpc' needs the Hugging Face hub.*--train-file, "
        r"--dev-file.*--task sentiment",
    ):
        load_task("mrpc")
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        load_task("imdb")


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_glue_task_from_local_files_keeps_its_columns_and_metrics(tmp_path):
    for split in ("train", "validation"):
        _write(tmp_path / f"{split}.csv", "sentence1,sentence2,label\na b,c d,1\ne f,g h,0\n")
    spec, ds = load_task(
        "mrpc", files={"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "validation.csv")}
    )
    assert spec.name == "mrpc" and spec.text_keys == ("sentence1", "sentence2") and len(ds["validation"]) == 2
    assert spec.metrics == GLUE["mrpc"].metrics


def test_own_csv_with_string_labels_and_own_columns(tmp_path):
    tr = _write(
        tmp_path / "tr.csv", 'review,verdict,id\n"good, fun",pos,1\nbad,neg,2\nmeh,neutral,3\nok,pos,4\n'
    )
    dv = _write(tmp_path / "dv.csv", "review,verdict,id\nfine,pos,9\nawful,neg,8\n")
    spec, ds = load_data(
        DataConfig(train_file=tr, dev_file=dv, text_columns=("review",), label_column="verdict")
    )
    assert spec.labels == ("neg", "neutral", "pos") and spec.num_labels == 3 and spec.text_keys == ("review",)
    assert spec.metrics == ("accuracy", "macro_f1") and spec.name == "tr"
    assert ds["train"]["label"] == [2, 0, 1, 2] and ds["validation"]["label"] == [2, 0]
    assert ds["train"]["review"][0] == "good, fun"
    assert spec.id2label() == {0: "neg", 1: "neutral", 2: "pos"}


def test_own_jsonl_sentence_pairs_integer_labels_and_tsv(tmp_path):
    rows = [{"q": "a", "p": "b", "y": 1}, {"q": "c", "p": "d", "y": 0}, {"q": "e", "p": "f", "y": 10}]
    tr = _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    dv = _write(tmp_path / "dev.tsv", "q\tp\ty\nx y\tz\t10\n")
    spec, ds = load_data(DataConfig(train_file=tr, dev_file=dv, text_columns=("q", "p"), label_column="y"))
    # integers sort numerically (10 after 1), and a CSV '10' matches the JSON 10
    assert (
        spec.labels == ("0", "1", "10")
        and ds["train"]["label"] == [1, 0, 2]
        and ds["validation"]["label"] == [2]
    )
    assert spec.text_keys == ("q", "p") and spec.name == tmp_path.name  # 'train.jsonl': its folder names it


def test_regression_and_binary_positive_label(tmp_path):
    tr = _write(tmp_path / "r.csv", "text,score\na,0.5\nb,3\nc,4.25\n")
    spec, ds = load_data(DataConfig(train_file=tr, dev_file=tr, label_column="score", regression=True))
    assert (
        spec.num_labels == 1
        and spec.metrics == ("pearson", "spearman")
        and ds["train"]["label"] == [0.5, 3, 4.25]
    )
    b = _write(tmp_path / "b.csv", "text,label\na,yes\nb,no\nc,yes\n")
    spec, _ = load_data(DataConfig(train_file=b, dev_file=b))
    assert spec.labels == ("no", "yes") and spec.positive == 1
    spec, _ = load_data(DataConfig(train_file=b, dev_file=b, positive_label="no"))
    assert spec.positive == 0
    # F1 is the positive class's: predicting every example 'yes' scores F1 1 for 'yes', 0 for 'no'
    logits, y = np.array([[0.0, 1.0]] * 3), np.array([1, 1, 1])
    assert (
        compute_metrics(TaskSpec("t", ("text",), 2, ("accuracy", "f1"), positive=1), logits, y)["f1"] == 1.0
    )
    assert (
        compute_metrics(TaskSpec("t", ("text",), 2, ("accuracy", "f1"), positive=0), logits, y)["f1"] == 0.0
    )


def test_metrics():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([1, 0, 0, 1])
    m = compute_metrics(GLUE["cola"], logits, y)
    assert m["accuracy"] == 0.5 and m["matthews"] == pytest.approx(0.0)
    assert compute_metrics(SENTIMENT, logits, y)["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    three = TaskSpec("t", ("text",), 3, ("accuracy", "macro_f1"))
    p = np.eye(3)[[0, 1, 2, 2]]
    m = compute_metrics(three, p, np.array([0, 1, 1, 2]))
    # per class F1: 1, 2/3, 2/3
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    r = compute_metrics(GLUE["stsb"], np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert r["spearman"] == pytest.approx(1.0) and 0.9 < r["pearson"] < 1.0


def test_covering_length():
    lengths = list(range(1, 1001))  # 99.9% of 1000 examples hold <= 999 tokens
    assert covering_length(lengths, cap=4096) == 1000  # the next multiple of 8
    assert covering_length([5] * 100 + [300]) == 304  # one long example in 101 is 1%: kept whole
    assert covering_length([5] * 5000 + [300]) == 8  # one in 5001 is 0.02%: cut
    assert covering_length([900], cap=512) == 512


@pytest.mark.parametrize(
    "train,dev,kw,msg",
    [
        ("text,label\na,x\n", None, {}, r"^data file not found: .*missing\.csv$"),
        ("text,label\n", "text,label\na,x\n", {}, r"train\.csv: no examples \(an empty split\)"),
        ("text,label\na,x\nb,y\n", "text,label\n", {}, r"dev\.csv: no examples \(an empty split\)"),
        (
            "body,label\na,x\n",
            "body,label\na,x\n",
            {},
            r"train\.csv: no column 'text'; name your text column\(s\) with "
            r"--text-columns \(columns: body, label\)",
        ),
        (
            "text,label\na,x\nb,y\n",
            "text,lbl\na,x\n",
            {},
            r"dev\.csv: no column 'label' \(columns: text, lbl\); name it "
            r"with --label-column",
        ),
        ("text,label\na,x\n,y\n", "text,label\na,x\n", {}, r"train\.csv, line 3, column 'text': empty text"),
        (
            "text,label\na,x\nb,y\n",
            "text,label\na,z\n",
            {},
            r"dev\.csv, line 2, column 'label': label 'z' never appears "
            r"in the train file \(its labels: x, y\)",
        ),
        ("text,label\na,x\nb,\n", "text,label\na,x\n", {}, r"train\.csv, line 3, column 'label': no label"),
        ("text,label\na,x\nb,x\n", "text,label\na,x\n", {}, r"one label only \('x'\)"),
        (
            "text,label\na,1\nb,two\n",
            "text,label\na,1\n",
            {"regression": True},
            r"train\.csv, line 3, column 'label': 'two' is not a number; --regression needs numeric labels",
        ),
        (
            "text,label\na,x,extra\n",
            "text,label\na,x\n",
            {},
            r"train\.csv, line 2: more fields than the header's 2",
        ),
    ],
)
def test_bad_files_one_line_naming_file_line_column(tmp_path, train, dev, kw, msg):
    tr = _write(tmp_path / "train.csv", train)
    dv = _write(tmp_path / "dev.csv", dev) if dev is not None else str(tmp_path / "missing.csv")
    if dev is None:
        tr, dv = dv, tr
    with pytest.raises(DataError, match=msg) as e:
        load_data(DataConfig(train_file=tr, dev_file=dv, **kw))
    assert len(str(e.value).splitlines()) == 1


def test_bad_jsonl_labels_and_values(tmp_path):
    dv = _write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n')
    mixed = _write(tmp_path / "m.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": 3}\n')
    with pytest.raises(
        DataError,
        match=r"m\.jsonl, line 3, column 'label': label 3 is number where line 1's "
        r"label 'x' is text; use one type for every label",
    ):
        load_data(DataConfig(train_file=mixed, dev_file=dv))
    null = _write(tmp_path / "n.jsonl", '{"text": null, "label": "x"}\n')
    with pytest.raises(DataError, match=r"n\.jsonl, line 1, column 'text': empty text"):
        load_data(DataConfig(train_file=null, dev_file=dv))
    broken = _write(tmp_path / "b.jsonl", '{"text": "a", "label": "x"}\n{"text": "b",\n')
    with pytest.raises(DataError, match=r"b\.jsonl, line 2: not a JSON object"):
        load_data(DataConfig(train_file=broken, dev_file=dv))
    many = _write(tmp_path / "many.csv", "text,label\n" + "".join(f"t,{i / 7:.3f}\n" for i in range(150)))
    with pytest.raises(
        DataError, match="150 distinct numeric labels; for numbers to predict pass --regression"
    ):
        load_data(DataConfig(train_file=many, dev_file=many))
    with pytest.raises(
        DataError, match=r"files of type '\.txt' are not supported; use \.csv, \.tsv or \.jsonl"
    ):
        load_data(DataConfig(train_file=_write(tmp_path / "x.txt", "a"), dev_file=dv))


def test_data_config_errors():
    with pytest.raises(ValueError, match="--train-file needs --dev-file too"):
        DataConfig(train_file="a.csv")
    with pytest.raises(ValueError, match="describe your files: give --train-file and --dev-file too"):
        DataConfig(text_columns=("a",))
    with pytest.raises(ValueError, match="give one text column, or two for sentence pairs"):
        DataConfig(train_file="a", dev_file="b", text_columns=("a", "b", "c"))


def test_data_identity_follows_the_files_contents(tmp_path):
    tr = _write(tmp_path / "t.csv", "text,label\na,x\nb,y\n")
    cfg = DataConfig(train_file=tr, dev_file=tr)
    before = data_identity(cfg)
    _write(tmp_path / "t.csv", "text,label\na,y\nb,x\n")
    assert data_identity(cfg) != before and data_identity(DataConfig()) == "builtin:sentiment"


def test_example_data_are_real_files_of_the_documented_shape(tmp_path):
    from autodistil.data.examples import write_examples

    paths = write_examples(tmp_path)
    p = paths["debates-party"]
    spec, ds = load_data(
        DataConfig(
            train_file=str(p["train"]),
            dev_file=str(p["dev"]),
            text_columns=("statement",),
            label_column="party",
        )
    )
    assert spec.labels == ("Democratic", "Moderator", "Republican") and spec.name == "debates-party"
    assert len(ds["train"]) + len(ds["validation"]) > 1000 and len(ds["validation"]) > 100
    r = paths["debates-reply"]
    spec, ds = load_data(
        DataConfig(
            train_file=str(r["train"]),
            dev_file=str(r["dev"]),
            text_columns=("first", "second"),
            label_column="relation",
        )
    )
    assert spec.labels == ("elsewhere", "reply") and spec.text_keys == ("first", "second")
    assert sum(ds["train"]["label"]) * 2 == len(ds["train"])  # one 'reply' and one 'elsewhere' per statement
