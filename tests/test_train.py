import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from autodistil.data.text import load_text_corpus, tokenize_blocks, treebank_splits
from autodistil.distill.losses import LossWeights
from autodistil.distill.train import TrainConfig, batch_indices, sandwich, train_supernets
from autodistil.nn import load_supernet
from autodistil.space import PAPER_SPACES


def test_treebank_markers_are_mapped():
    sp = treebank_splits("[UNK]")
    text = " ".join(sp["train"][:2000])
    assert "<unk>" not in text and " N " not in f" {text} "
    assert "[UNK]" in text and " 1 " in text
    assert len(sp["train"]) > 40000 and len(sp["validation"]) > 3000


def test_packing_and_corpus_errors(tokenizer, tmp_path):
    b = tokenize_blocks(["hello world"] * 50, tokenizer, seq_len=16)
    assert b.input_ids.shape[1] == 16 and bool((b.input_ids[:, 0] == tokenizer.cls_token_id).all())
    assert bool((b.input_ids[:, -1] == tokenizer.sep_token_id).all()) and bool(b.attention_mask.all())
    padded = tokenize_blocks(["a b", "c d e f g"], tokenizer, seq_len=8, pack=False)
    assert padded.attention_mask.sum(1).tolist() == [4, 7]
    with pytest.raises(ValueError, match="corpus too small"):
        tokenize_blocks(["hi"], tokenizer, seq_len=64)
    (tmp_path / "c.txt").write_text("first line of text\nsecond line\n" * 20)
    ds = load_text_corpus(str(tmp_path / "c.txt"))
    assert len(ds["train"]) + len(ds["validation"]) == 40
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="is empty"):
        load_text_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(ConnectionError, match="not a local path and the Hugging Face hub is offline"):
        load_text_corpus("no/such-corpus")


def test_sandwich_and_data_order_are_functions_of_step():
    s = PAPER_SPACES["tiny"]
    a, b = sandwich(s, 5, 0, 2), sandwich(s, 5, 0, 2)
    assert a == b and a[0][1] == s.largest() and a[1][1] == s.smallest() and len(a) == 4
    assert sandwich(s, 6, 0, 2) != a
    assert torch.equal(batch_indices(100, 8, 3, 0), batch_indices(100, 8, 3, 0))
    epoch = torch.cat([batch_indices(100, 10, k, 0) for k in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))


def _records(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def test_short_real_run_lowers_heldout_loss(tmp_path):
    """Real teacher, real text, random init: the held-out relation loss falls (CI-sized)."""
    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"),
        spaces=("tiny",),
        steps=30,
        batch_size=8,
        seq_len=64,
        eval_every=30,
        eval_blocks=16,
        max_train_blocks=600,
        init="random",
        lr=3e-4,
        warmup_steps=3,
    )
    s = train_supernets(cfg)["tiny"]
    for k in ("largest", "smallest", "random"):
        assert s["final_eval"][k] < s["first_eval"][k], (k, s)
    model, spaces, meta = load_supernet(tmp_path / "run" / "tiny")
    assert spaces[0].name == "tiny" and meta["extra"]["complete"]
    recs = [r for r in _records(tmp_path / "run" / "tiny" / "metrics.jsonl") if "members" in r]
    assert len(recs) == 30 and set(recs[0]["members"]) == {"largest", "smallest", "random1", "random2"}
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in recs)


def _tiny_cfg(teacher, out, **kw):
    base = dict(
        teacher=str(teacher),
        out_dir=str(out),
        spaces=("tiny",),
        steps=6,
        batch_size=4,
        seq_len=32,
        eval_every=3,
        eval_blocks=4,
        max_train_blocks=40,
        init="random",
        lr=1e-3,
        warmup_steps=1,
        ckpt_every=100,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_interrupt_and_resume_equals_uninterrupted(tiny_teacher_dir, tmp_path):
    train_supernets(_tiny_cfg(tiny_teacher_dir, tmp_path / "full"))

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernets(_tiny_cfg(tiny_teacher_dir, tmp_path / "cut"), on_step=interrupt)
    assert (tmp_path / "cut" / "tiny" / "state" / "trainer.pt").is_file()
    train_supernets(_tiny_cfg(tiny_teacher_dir, tmp_path / "cut", resume=True))
    full = _records(tmp_path / "full" / "tiny" / "metrics.jsonl")
    cut = _records(tmp_path / "cut" / "tiny" / "metrics.jsonl")
    assert [r["step"] for r in full] == [r["step"] for r in cut]
    for a, b in zip(full, cut):
        for k, v in a.get("members", a.get("eval")).items():
            assert abs(v - b.get("members", b.get("eval"))[k]) <= 1e-6, (a["step"], k)
    # a finished run is skipped on resume, and a checkpoint of another space is refused
    train_supernets(_tiny_cfg(tiny_teacher_dir, tmp_path / "cut", resume=True))
    with pytest.raises(ValueError, match="checkpoint .* is for space"):
        import shutil

        shutil.copytree(tmp_path / "cut" / "tiny" / "state", tmp_path / "other" / "small" / "state")
        train_supernets(_tiny_cfg(tiny_teacher_dir, tmp_path / "other", spaces=("small",), resume=True))


def _launch(tmp_path, teacher, out, extra, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(29600 + abs(hash(str(out))) % 300),
        "-m",
        "autodistil.cli",
        "train",
        "--teacher",
        str(teacher),
        "--out-dir",
        str(out),
        "--spaces",
        "tiny",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--eval-every",
        "2",
        "--eval-blocks",
        "4",
        "--max-train-blocks",
        "40",
        "--init",
        "random",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        *extra,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return _records(out / "tiny" / "metrics.jsonl"), json.loads((out / "summary.json").read_text())["tiny"]


@pytest.mark.multirank
def test_zero2_zero3_ddp_match_single_process(tiny_teacher_dir, tmp_path):
    single = train_supernets(_tiny_cfg(tiny_teacher_dir, tmp_path / "single", steps=4, eval_every=2))["tiny"]
    ref = _records(tmp_path / "single" / "tiny" / "metrics.jsonl")
    for stage in (2, 3):
        (tmp_path / f"z{stage}.json").write_text(
            json.dumps(
                {
                    "zero_optimization": {"stage": stage},
                    "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "weight_decay": 0.01}},
                }
            )
        )
    runs = {
        "ddp": [],
        "zero2": ["--deepspeed", str(tmp_path / "z2.json")],
        "zero3": ["--deepspeed", str(tmp_path / "z3.json")],
    }
    for name, extra in runs.items():
        recs, summary = _launch(tmp_path, tiny_teacher_dir, tmp_path / name, extra)
        assert [r["step"] for r in recs] == [r["step"] for r in ref], name
        for a, b in zip(ref, recs):
            for k, v in a.get("members", a.get("eval")).items():
                assert b.get("members", b.get("eval"))[k] == pytest.approx(v, rel=2e-4, abs=2e-5), (
                    name,
                    a["step"],
                    k,
                )
        model, spaces, _ = load_supernet(tmp_path / name / "tiny")  # consolidated: safetensors + JSON
        assert spaces[0].name == "tiny"
        if name.startswith("zero"):
            ratio = summary["optimizer_state_numel"] / single["optimizer_state_numel"]
            assert 0.4 < ratio < 0.6, (name, ratio)  # per-rank optimizer state is about half
    # consolidate command (ZeRO checkpoint -> plain supernet), which records the training config
    from autodistil.cli import main

    assert (
        main(["consolidate", "--run", str(tmp_path / "zero3" / "tiny"), "--out", str(tmp_path / "cons")]) == 0
    )
    m1, _, cons_meta = load_supernet(tmp_path / "cons")
    run_cfg = json.loads((tmp_path / "zero3" / "train_config.json").read_text())
    assert cons_meta["extra"]["train"] == run_cfg and cons_meta["extra"]["train"]["loss"]["relation"] == 1.0
    m2, _, _ = load_supernet(tmp_path / "zero3" / "tiny")
    for (n, p), (_, q) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p, q), n


@pytest.mark.figures
def test_few_hundred_steps_lower_heldout_relation_loss(tmp_path):
    """The figures of docs/reports/2026-11-25-supernet-training-300-steps.md: real teacher, Penn
    Treebank, the teacher-derived 'tiny' space, random init."""
    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"),
        spaces=("tiny",),
        steps=300,
        batch_size=16,
        seq_len=128,
        eval_every=100,
        eval_blocks=32,
        max_train_blocks=4000,
        init="random",
        lr=3e-4,
        warmup_steps=20,
    )
    s = train_supernets(cfg)["tiny"]
    print(json.dumps(s))
    for k in ("largest", "smallest", "random"):
        assert s["final_eval"][k] < 0.95 * s["first_eval"][k], (k, s)


def _trainer(teacher_dir, out, **kw):
    from autodistil.distill.train import SupernetTrainer
    from autodistil.nn import TeacherNet
    from autodistil.space import derive_spaces
    from autodistil.teacher import load_teacher

    hf, _, info = load_teacher(str(teacher_dir), with_tokenizer=False)
    cfg = _tiny_cfg(teacher_dir, out, **kw)
    space = derive_spaces(info.shape, ("tiny",))["tiny"]
    return SupernetTrainer(cfg, space, TeacherNet(hf, info.shape), {"sha256": info.sha256}, None, None, out)


def test_deepspeed_and_single_process_get_the_same_param_groups(tiny_teacher_dir, tmp_path, monkeypatch):
    """One place builds the AdamW groups: decay on >= 2-D weights (embeddings included), none on
    biases and LayerNorm weights, on the single-process path and the DeepSpeed path alike."""
    deepspeed = pytest.importorskip("deepspeed")
    single = _trainer(tiny_teacher_dir, tmp_path / "a", loss=LossWeights(relation=1.0, hidden=1.0))
    names = {id(p): n for n, p in single.model.named_parameters()}
    got_single = [
        (sorted(names[id(p)] for p in g["params"]), g["weight_decay"]) for g in single.opt.param_groups
    ]
    captured = {}

    def fake_initialize(model, model_parameters, config, lr_scheduler):
        captured["groups"] = model_parameters
        captured["names"] = {id(p): n for n, p in model.named_parameters()}
        raise RuntimeError("captured")

    monkeypatch.setattr(deepspeed, "initialize", fake_initialize)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(RuntimeError, match="captured"):
        _trainer(
            tiny_teacher_dir,
            tmp_path / "b",
            loss=LossWeights(relation=1.0, hidden=1.0),
            deepspeed=str(tmp_path / "ds.json"),
        )
    groups = captured["groups"]
    assert isinstance(groups, list) and all(isinstance(g, dict) for g in groups), "DeepSpeed got a flat list"
    got_ds = [(sorted(captured["names"][id(p)] for p in g["params"]), g["weight_decay"]) for g in groups]
    assert got_ds == got_single
    decay, no_decay = got_single
    assert decay[1] == 0.01 and no_decay[1] == 0.0
    assert "embeddings.word_embeddings.weight" in decay[0] and "hidden_proj.weight" in decay[0]
    assert (
        "embeddings.LayerNorm.weight" in no_decay[0]
        and "encoder.layer.0.intermediate.dense.bias" in no_decay[0]
    )


def test_bf16_autocast_step_with_every_loss_is_close_to_fp32(tiny_teacher_dir, tmp_path):
    """Torch backend under CPU bf16 autocast, relation + attention-map + hidden-state losses:
    one sandwich step runs, its losses are finite and close to the fp32 step's."""
    losses = LossWeights(relation=1.0, attention=1.0, hidden=1.0)
    recs = {}
    for prec in ("fp32", "bf16"):
        train_supernets(
            _tiny_cfg(tiny_teacher_dir, tmp_path / prec, steps=1, eval_every=1, loss=losses, precision=prec)
        )
        recs[prec] = [r for r in _records(tmp_path / prec / "tiny" / "metrics.jsonl") if "members" in r][0]
    for k, v in recs["fp32"]["members"].items():
        b = recs["bf16"]["members"][k]
        assert math.isfinite(b) and b == pytest.approx(v, rel=3e-2), (k, v, b)
    assert math.isfinite(recs["bf16"]["grad_norm"])
    with pytest.raises(ValueError, match="task-agnostic supernet training has no logits"):
        TrainConfig(loss=LossWeights(logits=1.0))


def test_train_step_reads_the_member_losses_once(tiny_teacher_dir, tmp_path):
    """The member losses are read from the device once, after the whole sandwich: a read per
    member (float(loss)) makes the host wait for the GPU after each member's backward. Counts the
    reads of device scalars (aten._local_scalar_dense: item/float/bool) and copies to the host
    inside one step: at most the gradient norm's and one for the stacked losses."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        where: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "_local_scalar_dense":
                ours = [f for f in traceback.extract_stack() if "autodistil" in f.filename]
                Reads.where.append(f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "torch")
            return func(*args, **(kwargs or {}))

    from autodistil.data.text import TokenBlocks

    ids = torch.randint(1000, 5000, (12, 32), generator=torch.Generator().manual_seed(0))
    tr = _trainer(tiny_teacher_dir, tmp_path / "r", loss=LossWeights(relation=1.0, hidden=1.0))
    tr.train_data = tr.held = TokenBlocks(ids, torch.ones_like(ids))
    tr.train_step()  # the first step builds state
    with Reads():
        rec = tr.train_step()
    assert len(rec["members"]) == 4 and all(math.isfinite(v) for v in rec["members"].values())
    assert len(Reads.where) <= 2, f"{len(Reads.where)} device scalar reads in one step: {Reads.where}"


def test_loss_collective_runs_on_the_trainers_device(monkeypatch):
    """Under NCCL the member-loss all-reduce must run on the trainer's own device (NCCL takes CUDA
    tensors only), not on whatever device is current: a process group set up outside
    init_distributed may never have called set_device. Under gloo it runs on the CPU."""
    import autodistil.distill.train as tr

    seen = []
    monkeypatch.setattr(tr, "world", lambda: (0, 2))
    monkeypatch.setattr(tr.dist, "all_reduce", lambda t: seen.append(t.device) or t.mul_(2))
    dev = torch.device("meta")  # stands in for cuda:LOCAL_RANK: the collective is only recorded here
    monkeypatch.setattr(tr.dist, "get_backend", lambda: "nccl")
    with pytest.raises(NotImplementedError):  # a meta tensor has no values to read back
        tr._all_means(torch.tensor([1.0, 3.0]), dev)
    assert seen == [dev]
    monkeypatch.setattr(tr.dist, "get_backend", lambda: "gloo")
    assert tr._all_means(torch.tensor([1.0, 3.0]), dev) == [1.0, 3.0]
    assert seen[-1] == torch.device("cpu")
