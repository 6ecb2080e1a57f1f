"""Fine-tuning: length-grouped batching, cached teacher logits for KD, the cached fine-tuned
teacher, and the first-k-layers export."""

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_

from autodistil.finetune import train as ft
from autodistil.finetune.train import (
    FinetuneConfig,
    batch_stream,
    finetune,
    length_grouped_batches,
    padded_positions,
)


def _tiny(tmp, model, **kw):
    base = dict(
        model=str(model),
        out_dir=str(tmp),
        max_train_examples=48,
        max_eval_examples=24,
        batch_size=8,
        max_seq_len=32,
        max_steps=6,
        log_every=1,
        eval_batch_size=32,
    )
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_teacher_dir):
    """A classifier folder (the tiny teacher fine-tuned for a few steps) with random weights of a
    realistic scale, so that its logits differ clearly from example to example."""
    d = tmp_path_factory.mktemp("tiny_cls") / "cls"
    finetune(_tiny(d, tiny_teacher_dir, lr=3e-3, max_steps=4), progress=False)
    m = ft.load_classifier(d, 2)
    randomize_(m, seed=1)
    with torch.no_grad():
        m.classifier.weight.mul_(100)
    m.save_pretrained(d)
    return d


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize("n,bs", [(1000, 32), (64, 8), (5, 8), (333, 7)])
def test_length_grouped_every_example_once_per_epoch(n, bs):
    lengths = [random.Random(i).randint(1, 60) for i in range(n)]
    rng = random.Random(0)
    for _ in range(3):  # consecutive epochs from one generator
        batches = length_grouped_batches(lengths, bs, rng, chunk_batches=4)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert len(batches) == -(-n // bs)  # ceil: one partial batch at most
        assert sum(len(b) < bs for b in batches) <= 1


def test_length_grouped_deterministic_in_seed():
    lengths = [random.Random(i).randint(1, 60) for i in range(500)]
    take = lambda seed, k=40: [next(s) for s in [batch_stream(lengths, 16, seed)] for _ in range(k)]
    assert take(3) == take(3)
    assert take(3) != take(4)
    # grouped batches hold similar lengths: within-batch spread far below random batching
    spread = lambda bl: np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in bl])
    rand = [next(s) for s in [batch_stream(lengths, 16, 3, group_by_length=False)] for _ in range(40)]
    assert spread(take(3)) < 0.25 * spread(rand)


def test_no_grouping_keeps_the_original_order():
    """group_by_length=False: the order finetune() used before (shuffle per epoch, full batches)."""
    for n, bs in ((50, 8), (5, 8), (16, 8)):
        rng, order, pos, old = random.Random(7), [], 0, []
        for _ in range(20):
            if pos + bs > len(order):
                order, pos = list(range(n)), 0
                rng.shuffle(order)
            old.append(order[pos : pos + bs])
            pos += bs
        s = batch_stream([1] * n, bs, 7, group_by_length=False)
        assert [next(s) for _ in range(20)] == old


def test_grouping_cuts_padding_on_the_real_task(tokenizer):
    from autodistil.data.tasks import load_task

    spec, ds = load_task("sentiment")
    enc = ft.encode(spec, ds["train"], tokenizer, 64)
    lengths = [len(x) for x in enc["input_ids"]]
    assert len(lengths) > 10000
    grouped = padded_positions(lengths, length_grouped_batches(lengths, 32, random.Random(0)))
    s = batch_stream(lengths, 32, 0, group_by_length=False)
    rand = padded_positions(lengths, [next(s) for _ in range(len(lengths) // 32)])
    real = sum(lengths)
    assert rand > 0.4 * real  # random batches pad a lot (mean 27 tokens, batch max often ~50)
    assert grouped < 0.1 * rand, (grouped, rand, real)


# ---------------------------------------------------------------- cached KD logits


def test_kd_cached_logits_match_per_step_teacher(tmp_path, tiny_teacher_dir, tiny_classifier):
    kw = dict(teacher=str(tiny_classifier), kd_alpha=0.8, kd_temperature=2.0, lr=1e-3)
    kd_dir = tiny_classifier / "kd_logits"
    before = set(kd_dir.glob("*.npy")) if kd_dir.exists() else set()
    live = finetune(_tiny(tmp_path / "live", tiny_teacher_dir, kd_cache=False, **kw), progress=False)
    assert not (set(kd_dir.glob("*.npy")) - before if kd_dir.exists() else set())  # no cache without kd_cache
    cached = finetune(_tiny(tmp_path / "cached", tiny_teacher_dir, **kw), progress=False)
    files = set(kd_dir.glob("*.npy")) - before
    assert len(files) == 1 and cached["kd"]["file"] == str(next(iter(files))) and not cached["kd"]["reused"]
    arr = np.load(next(iter(files)))
    assert (
        arr.shape == (48, 2) and (arr[:, 0] - arr[:, 1]).std() > 0.2
    )  # the teacher's margins vary by example
    a, b = [r["loss"] for r in live["log"]], [r["loss"] for r in cached["log"]]
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    again = finetune(_tiny(tmp_path / "again", tiny_teacher_dir, **kw), progress=False)
    assert again["kd"]["reused"] and [r["loss"] for r in again["log"]] == b
    # another sequence length is another key; a corrupt file is recomputed, not trusted
    finetune(_tiny(tmp_path / "seq24", tiny_teacher_dir, max_seq_len=24, max_steps=1, **kw), progress=False)
    assert len(set(kd_dir.glob("*.npy")) - before) == 2
    next(iter(files)).write_bytes(b"not numpy")
    msgs = []
    fixed = finetune(_tiny(tmp_path / "fixed", tiny_teacher_dir, **kw), progress=False, log=msgs.append)
    assert not fixed["kd"]["reused"] and any("unusable" in m for m in msgs)
    assert [r["loss"] for r in fixed["log"]] == b
    # the comparison can fail: logits of the wrong examples (a misaligned cache) change the trajectory
    np.save(next(iter(files)), arr[np.random.default_rng(0).permutation(len(arr))])
    wrong = finetune(_tiny(tmp_path / "wrong", tiny_teacher_dir, **kw), progress=False)
    assert wrong["kd"]["reused"]
    assert not np.allclose([r["loss"] for r in wrong["log"]], a, rtol=1e-4, atol=1e-5)


def test_kd_teacher_must_be_a_classifier(tmp_path, tiny_teacher_dir):
    with pytest.raises(ValueError, match="not a fine-tuned classifier"):
        finetune(
            _tiny(tmp_path / "x", tiny_teacher_dir, teacher=str(tiny_teacher_dir), kd_alpha=0.5),
            progress=False,
        )


def test_result_has_seconds_and_dev_metrics(tmp_path, tiny_teacher_dir):
    r = finetune(_tiny(tmp_path / "r", tiny_teacher_dir, max_steps=2), progress=False)
    assert r["seconds"] >= r["train_seconds"] >= 0 and set(r["metrics"]) == {"accuracy", "f1"}
    assert 0 <= r["pad_fraction"] < 1
    saved = json.loads((tmp_path / "r" / "finetune_results.json").read_text())
    assert saved["seconds"] == r["seconds"] and saved["config"]["group_by_length"] is True


# ---------------------------------------------------------------- cached fine-tuned teacher


def test_finetuned_teacher_is_cached(tmp_path, tiny_teacher_dir, monkeypatch):
    from autodistil.finetune.teacher import finetuned_teacher

    kw = dict(
        epochs=1.0,
        batch_size=16,
        max_seq_len=32,
        seed=0,
        max_train_examples=32,
        max_eval_examples=16,
        cache_root=tmp_path,
        progress=False,
    )
    calls = Counter()
    real = ft.finetune

    def counting(cfg, **k):
        calls[cfg.lr] += 1
        return real(cfg, **k)

    monkeypatch.setattr(ft, "finetune", counting)
    logs = []
    folder, r = finetuned_teacher(str(tiny_teacher_dir), "sentiment", lr=1e-3, log=logs.append, **kw)
    assert calls[1e-3] == 1 and not r["cached"] and (folder / "model.safetensors").is_file()
    assert folder.parent == tmp_path / "finetuned" and r["steps"] == 2

    def boom(cfg, **k):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(ft, "finetune", boom)
    folder2, r2 = finetuned_teacher(str(tiny_teacher_dir), "sentiment", lr=1e-3, log=logs.append, **kw)
    assert folder2 == folder and r2["cached"] and r2["score"] == r["score"] and "cached" in logs[-1]

    monkeypatch.setattr(ft, "finetune", counting)
    folder3, r3 = finetuned_teacher(str(tiny_teacher_dir), "sentiment", lr=5e-4, log=logs.append, **kw)
    assert calls[5e-4] == 1 and folder3 != folder and not r3["cached"]
    # a folder whose results name another recipe (or none) never counts
    (folder / "finetune_results.json").unlink()
    finetuned_teacher(str(tiny_teacher_dir), "sentiment", lr=1e-3, log=logs.append, **kw)
    assert calls[1e-3] == 2


def test_reusable_result_rules(tmp_path):
    """One rule for both fine-tuning caches: a finished folder stands for a config only when the
    recorded config (ignored fields aside), the task and every expected entry match."""
    from dataclasses import asdict, replace

    from autodistil.data.tasks import DataConfig

    cfg = FinetuneConfig(
        model="m", out_dir=str(tmp_path), data=DataConfig(task="sst2"), lr=3e-4, max_seq_len=64
    )
    rec = {
        "task": "sst2",
        "config": json.loads(json.dumps(asdict(cfg))),
        "model_identity": [["config.json", 1, 2]],
        "score": 0.7,
        "data_identity": "builtin:sst2",
    }
    p = tmp_path / ft.RESULTS_FILE

    def write(r):
        p.write_text(json.dumps(r))

    write(rec)
    assert ft.reusable_result(tmp_path, cfg) is None  # no model in the folder
    (tmp_path / "config.json").write_text("{}")
    assert ft.reusable_result(tmp_path, cfg, model_identity=[("config.json", 1, 2)])["score"] == 0.7
    assert (
        ft.reusable_result(tmp_path, cfg, model_identity=[("config.json", 1, 3)]) is None
    )  # weights rewritten
    assert ft.reusable_result(tmp_path, replace(cfg, lr=1e-4)) is None  # other recipe
    moved = replace(cfg, model="elsewhere", out_dir="x")
    assert ft.reusable_result(tmp_path, moved) is None
    assert ft.reusable_result(tmp_path, moved, ignore=("model", "out_dir")) is not None
    write({**rec, "data_identity": "builtin:sentiment"})  # trained on other data
    assert ft.reusable_result(tmp_path, cfg) is None
    write({k: v for k, v in rec.items() if k != "data_identity"})  # a record that does not say
    assert ft.reusable_result(tmp_path, cfg) is None
    p.write_text('{"task": "sst2", "conf')  # cut short
    assert ft.reusable_result(tmp_path, cfg) is None
    write([1, 2])
    assert ft.reusable_result(tmp_path, cfg) is None


def test_pipeline_reuses_a_finished_finetuning_until_its_teacher_changes(tmp_path):
    """autodistil.pipeline._finetune_cached: the second call with the same config is served from
    disk; re-training the teacher in place (same path, new weights) makes it train again."""
    import os
    from dataclasses import asdict, replace

    from autodistil.data.tasks import data_identity
    from autodistil.pipeline import _finetune_cached

    model, teacher = tmp_path / "student", tmp_path / "teacher"
    for d in (model, teacher):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"0" * 8)
    calls = []

    def fake(cfg, extra):
        calls.append(cfg)
        out = Path(cfg.out_dir)
        out.mkdir(exist_ok=True)
        (out / "config.json").write_text("{}")
        r = {
            "task": cfg.task,
            "score": 0.5,
            "config": asdict(cfg),
            "data_identity": data_identity(cfg.data),
            **extra,
        }
        (out / ft.RESULTS_FILE).write_text(json.dumps(r))
        return r

    cfg = FinetuneConfig(model=str(model), out_dir=str(tmp_path / "out"), teacher=str(teacher), kd_alpha=0.5)
    assert _finetune_cached(cfg, fake)["score"] == 0.5 and len(calls) == 1
    assert _finetune_cached(cfg, fake)["score"] == 0.5 and len(calls) == 1  # served from disk
    (teacher / "model.safetensors").write_bytes(b"1" * 9)  # the teacher trained again
    os.utime(teacher / "model.safetensors", ns=(1, 1))
    _finetune_cached(cfg, fake)
    assert len(calls) == 2
    _finetune_cached(replace(cfg, lr=1e-3), fake)  # another recipe
    assert len(calls) == 3


# ---------------------------------------------------------------- first-k-layers export


def _hidden(folder, tokenizer, sentences, layers_out=False):
    from transformers import AutoModel

    m = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    b = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return m, b, m(**b, output_hidden_states=layers_out)


@pytest.mark.parametrize("source,k", [("base", 1), ("classifier", 1), ("classifier", 2)])
def test_export_first_layers_matches_hidden_state_k(
    tmp_path, tiny_teacher_dir, tiny_classifier, tokenizer, sentences, source, k
):
    from autodistil.export import STUDENT_META, export_first_layers

    src = tiny_teacher_dir if source == "base" else tiny_classifier
    out = export_first_layers(src, k, tmp_path / "cut")
    cut, b, o = _hidden(out, tokenizer, sentences)
    assert type(cut).__name__ == "BertModel" and cut.config.num_hidden_layers == k
    # the source's encoder read as a BertModel (its task head dropped), all hidden states
    from transformers import BertModel

    full = BertModel.from_pretrained(src, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = full(**b, output_hidden_states=True)
    assert len(ref.hidden_states) == 3  # the source keeps 2 layers, so k < 2 really drops one
    torch.testing.assert_close(o.last_hidden_state, ref.hidden_states[k], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o.pooler_output, full.pooler(ref.hidden_states[k]), rtol=1e-5, atol=1e-5)
    meta = json.loads((out / STUDENT_META).read_text())
    assert meta["layers_kept"] == k and meta["source_layers"] == 2 and meta["model_class"] == "BertModel"
    assert meta["params"] == sum(p.numel() for p in cut.parameters())
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)(sentences)["input_ids"] == tokenizer(sentences)["input_ids"]


def test_export_first_layers_errors(tmp_path, tiny_teacher_dir):
    from transformers import AlbertConfig, AlbertModel
    from autodistil.export import export_first_layers

    for k in (0, 3):
        with pytest.raises(ValueError, match=r"outside 1\.\.2"):
            export_first_layers(tiny_teacher_dir, k, tmp_path / "x")
    d = tmp_path / "albert"
    AlbertModel(
        AlbertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            embedding_size=16,
        )
    ).save_pretrained(d)
    with pytest.raises(ValueError, match="model_type 'albert' is not supported; supported families: bert, "):
        export_first_layers(d, 1, tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_first_layers(tmp_path / "nothing", 1, tmp_path / "z")
    assert not (tmp_path / "x").exists()
