"""Fine-tune an exported student (or any HF BERT folder) on a task with a classification or
regression head; optional task distillation from a fine-tuned teacher (its logits, the seed's
"teacher logits" objective, and multi-layer hidden states through a learned projection)."""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.tasks import TaskSpec, compute_metrics, load_task
from ..distill.losses import hidden_state_loss, logits_loss, uniform_layer_map
from ..io import atomic_dir


@dataclass(frozen=True)
class FinetuneConfig:
    model: str = ""                      # HF folder (exported student, or a teacher)
    task: str = "sentiment"
    out_dir: str = "runs/finetune"
    lr: float = 2e-5                     # the paper's GLUE setting
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: Optional[int] = None      # overrides epochs
    max_seq_len: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    teacher: Optional[str] = None        # fine-tuned teacher folder for task distillation
    kd_alpha: float = 0.0                # loss = (1-a) task loss + a * logits KD
    kd_temperature: float = 1.0
    hidden_weight: float = 0.0           # + w * hidden-state MSE through a projection
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    eval_batch_size: int = 64
    fallback: bool = True                # offline GLUE -> the embedded sentiment task, with a message

    def __post_init__(self):
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha={self.kd_alpha} must be within [0, 1]")
        if (self.kd_alpha > 0 or self.hidden_weight > 0) and not self.teacher:
            raise ValueError("kd_alpha / hidden_weight need a fine-tuned --teacher folder")
        for f in ("lr", "batch_size", "max_seq_len"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")


def _subset(ds, n, seed):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def encode(spec: TaskSpec, ds, tok, max_len: int) -> dict:
    cols = [list(ds[k]) for k in spec.text_keys]  # datasets may hand back lazy columns
    enc = tok(*cols, truncation=True, max_length=max_len)
    labels = np.asarray(list(ds["label"]), dtype=np.float32 if spec.num_labels == 1 else np.int64)
    return {"input_ids": enc["input_ids"], "token_type_ids": enc.get("token_type_ids"), "labels": labels}


def batches(data: dict, idx: list, pad_id: int):
    ids = [data["input_ids"][i] for i in idx]
    T = max(len(x) for x in ids)
    x = torch.full((len(ids), T), pad_id, dtype=torch.long)
    tt = torch.zeros_like(x)
    m = torch.zeros_like(x)
    for r, i in enumerate(idx):
        n = len(data["input_ids"][i])
        x[r, :n] = torch.tensor(data["input_ids"][i])
        m[r, :n] = 1
        if data["token_type_ids"] is not None:
            tt[r, :n] = torch.tensor(data["token_type_ids"][i])
    return x, m, tt, torch.as_tensor(data["labels"][idx])


def load_classifier(folder, num_labels: int):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    import autodistil  # noqa: F401  (registers AutoDistilBert)
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json (expected a Hugging Face folder)")
    v = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh task head is expected, not worth a warning
    try:
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(v)


@torch.no_grad()
def evaluate_model(model, spec: TaskSpec, data: dict, pad_id: int, batch: int = 64) -> dict:
    model.eval()
    outs = []
    n = len(data["labels"])
    order = sorted(range(n), key=lambda i: len(data["input_ids"][i]))  # length-bucketed: less padding
    for s in range(0, n, batch):
        idx = order[s:s + batch]
        x, m, tt, _ = batches(data, idx, pad_id)
        outs.append((idx, model(input_ids=x, attention_mask=m, token_type_ids=tt).logits.float().numpy()))
    preds = np.zeros((n, outs[0][1].shape[-1]), dtype=np.float32)
    for idx, o in outs:
        preds[idx] = o
    return compute_metrics(spec, preds, data["labels"])


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    from transformers import AutoTokenizer
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    spec, ds = load_task(cfg.task, fallback=cfg.fallback)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    train = encode(spec, _subset(ds["train"], cfg.max_train_examples, cfg.seed), tok, cfg.max_seq_len)
    dev = encode(spec, _subset(ds["validation"], cfg.max_eval_examples, cfg.seed), tok, cfg.max_seq_len)
    model = load_classifier(cfg.model, spec.num_labels)
    teacher = proj = None
    if cfg.teacher:
        teacher = load_classifier(cfg.teacher, spec.num_labels).eval().requires_grad_(False)
        if cfg.hidden_weight > 0:
            hs, ht = model.config.hidden_size, teacher.config.hidden_size
            proj = torch.nn.Linear(hs, ht) if hs != ht else None
    n = len(train["labels"])
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    params = list(model.parameters()) + (list(proj.parameters()) if proj is not None else [])
    decay = [p for p in params if p.dim() >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=cfg.lr)
    warm = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    rng = random.Random(cfg.seed)
    order, pos = [], 0
    t0 = time.perf_counter()
    log = []
    model.train()
    for step in tqdm(range(total), desc=f"fine-tune {Path(cfg.model).name} on {spec.name}", disable=not progress,
                     leave=False):
        if pos + cfg.batch_size > len(order):
            order, pos = list(range(n)), 0
            rng.shuffle(order)
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x, m, tt, y = batches(train, idx, tok.pad_token_id)
        out = model(input_ids=x, attention_mask=m, token_type_ids=tt, labels=y,
                    output_hidden_states=proj is not None or cfg.hidden_weight > 0)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(input_ids=x, attention_mask=m, token_type_ids=tt,
                                output_hidden_states=cfg.hidden_weight > 0)
            if cfg.kd_alpha > 0:
                loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * logits_loss(t_out.logits, out.logits, cfg.kd_temperature)
            if cfg.hidden_weight > 0:
                lm = uniform_layer_map(len(t_out.hidden_states) - 1, len(out.hidden_states) - 1)
                loss = loss + cfg.hidden_weight * hidden_state_loss(t_out.hidden_states, out.hidden_states, lm, proj, m)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0 or step + 1 == total:
            log.append({"step": step + 1, "loss": float(loss.detach())})
    train_s = time.perf_counter() - t0
    metrics = evaluate_model(model, spec, dev, tok.pad_token_id, cfg.eval_batch_size)
    out_dir = Path(cfg.out_dir)
    result = {"task": spec.name, "model": str(cfg.model), "metrics": metrics, "headline": spec.metrics[0],
              "score": metrics[spec.metrics[0]], "train_examples": n, "dev_examples": len(dev["labels"]),
              "steps": total, "train_seconds": round(train_s, 1), "config": asdict(cfg), "log": log}

    def build(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "finetune_results.json").write_text(json.dumps(result, indent=2))
    atomic_dir(out_dir, build)
    return result


def evaluate_folder(folder, task: str, max_eval_examples: Optional[int] = None, max_seq_len: int = 128,
                    fallback: bool = True) -> dict:
    from transformers import AutoTokenizer
    spec, ds = load_task(task, fallback=fallback)
    tok = AutoTokenizer.from_pretrained(folder)
    dev = encode(spec, _subset(ds["validation"], max_eval_examples, 0), tok, max_seq_len)
    model = load_classifier(folder, spec.num_labels)
    m = evaluate_model(model, spec, dev, tok.pad_token_id)
    return {"task": spec.name, "model": str(folder), "metrics": m, "score": m[spec.metrics[0]],
            "headline": spec.metrics[0], "dev_examples": len(dev["labels"])}
