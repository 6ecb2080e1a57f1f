"""Fine-tune an exported student (or any HF BERT folder) on a task with a classification or
regression head; optional task distillation from a fine-tuned teacher (its logits, the seed's
"teacher logits" objective, and multi-layer hidden states through a learned projection).

Fast on a few CPU cores: batches are grouped by length (little padding), and for logits-only
distillation the teacher's logits are computed once over the training examples and cached next
to the teacher (``<teacher>/kd_logits/<key>.npy``) instead of a teacher forward per step."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.tasks import (
    AUTO_COVERAGE,
    DataConfig,
    TaskSpec,
    compute_metrics,
    covering_length,
    data_identity,
    load_data,
)
from ..distill.losses import hidden_state_loss, logits_loss, uniform_layer_map
from ..distill.train import make_optimizer
from ..io import atomic_dir, atomic_save


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning job: a model folder, a task (built-in or the user's files) and a recipe."""

    model: str = ""  # the Hugging Face folder to fine-tune (an exported student, or a teacher)
    data: DataConfig = field(default_factory=DataConfig, metadata={"flatten": True})
    out_dir: str = "runs/finetune"  # where the fine-tuned classifier folder is written
    lr: float = 2e-5  # peak learning rate (linear warm-up, then linear decay to 0)
    batch_size: int = 32  # examples per step
    epochs: float = 3.0  # passes over the training examples (fractions allowed)
    max_steps: Optional[int] = None  # stop after this many steps instead (overrides epochs)
    max_seq_len: Union[int, str] = 128  # tokens per example (longer ones are cut); 'auto': the shortest that
    # holds 99.9% of the train examples whole
    warmup_ratio: float = 0.1  # share of the steps spent warming the learning rate up
    weight_decay: float = 0.01  # AdamW weight decay (matrices only)
    seed: int = 0  # seed of the head's initialisation, the batch order and the subset
    teacher: Optional[str] = None  # a fine-tuned classifier folder to distil from (logits KD)
    kd_alpha: float = 0.0  # loss = (1 - a) task loss + a KL to the teacher's logits
    kd_temperature: float = 1.0  # softmax temperature of the logits distillation
    hidden_weight: float = 0.0  # + this x hidden-state MSE to the teacher through a learned projection
    max_train_examples: Optional[int] = None  # a random subset of this many train examples (default: all)
    max_eval_examples: Optional[int] = None  # the first this many dev examples (default: all)
    eval_batch_size: int = 64  # examples per step when scoring the dev split
    group_by_length: bool = True  # batches of similar length (shuffled chunks of ~50 batches): less padding
    kd_cache: bool = True  # logits-only KD: the teacher's logits computed once and cached on disk
    log_every: int = 50  # the loss is logged every this many steps (and at the last one)

    def __post_init__(self):
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha={self.kd_alpha} must be within [0, 1]")
        if (self.kd_alpha > 0 or self.hidden_weight > 0) and not self.teacher and self._needs_teacher():
            raise ValueError("kd_alpha / hidden_weight need a fine-tuned --teacher folder")
        for f in ("lr", "batch_size", "log_every"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs} must be >= 0")
        seq = self.max_seq_len
        if isinstance(seq, str) and seq.isdigit():
            object.__setattr__(self, "max_seq_len", int(seq))
        elif seq != "auto" and not (isinstance(seq, int) and not isinstance(seq, bool) and seq > 0):
            raise ValueError(
                f"max_seq_len={seq!r}: a positive number of tokens, or 'auto' (the shortest that "
                f"holds 99.9% of the train examples)"
            )

    def _needs_teacher(self) -> bool:
        """Whether distillation settings need `teacher` here (a job that supplies it itself says no)."""
        return True

    @property
    def task(self) -> str:
        return self.data.name


def _subset(ds, n, seed):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def encode(spec: TaskSpec, ds, tok, max_len: int) -> dict:
    cols = [list(ds[k]) for k in spec.text_keys]  # datasets may hand back lazy columns
    enc = tok(*cols, truncation=True, max_length=max_len)
    labels = np.asarray(list(ds["label"]), dtype=np.float32 if spec.num_labels == 1 else np.int64)
    return {"input_ids": enc["input_ids"], "token_type_ids": enc.get("token_type_ids"), "labels": labels}


def text_lengths(spec: TaskSpec, ds, tok) -> list:
    """Token counts of each example, uncut (special tokens included)."""
    cols = [list(ds[k]) for k in spec.text_keys]
    return [len(x) for x in tok(*cols, truncation=False)["input_ids"]]


def resolve_seq_len(max_seq_len, spec: TaskSpec, train_ds, tok) -> tuple[int, Optional[dict]]:
    """(tokens per example, how 'auto' was resolved or None): 'auto' is the shortest multiple of 8 that
    holds 99.9% of the train examples whole, at most the tokenizer's limit."""
    if max_seq_len != "auto":
        return int(max_seq_len), None
    cap = tok.model_max_length if 0 < getattr(tok, "model_max_length", 0) <= 4096 else 512
    lengths = text_lengths(spec, train_ds, tok)
    n = covering_length(lengths, AUTO_COVERAGE, cap=cap)
    held = float(np.mean(np.asarray(lengths) <= n))
    return n, {
        "auto": True,
        "max_seq_len": n,
        "coverage": round(held, 5),
        "longest": int(max(lengths)),
        "examples": len(lengths),
    }


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


# ---------------------------------------------------------------- batching


def length_grouped_batches(lengths, batch_size: int, rng: random.Random, chunk_batches: int = 50) -> list:
    """One epoch of batches (lists of example indices) of similar length: shuffle, cut into chunks
    of `chunk_batches` batches, sort each chunk by length, cut it into batches, shuffle the batch
    order. Every example exactly once (one partial batch at most); deterministic in `rng`."""
    if batch_size <= 0 or chunk_batches <= 0:
        raise ValueError(f"batch_size={batch_size} and chunk_batches={chunk_batches} must be positive")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * chunk_batches
    out = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])  # stable: ties stay shuffled
        out.extend(part[s : s + batch_size] for s in range(0, len(part), batch_size))
    rng.shuffle(out)
    return out


def batch_stream(lengths, batch_size: int, seed: int, group_by_length: bool = True, chunk_batches: int = 50):
    """Endless batches of example indices, epoch after epoch, deterministic in `seed`.
    group_by_length=False is the original order: a fresh shuffle per epoch, full batches only
    (the tail waits for the next shuffle; all examples in one batch when fewer than batch_size)."""
    rng = random.Random(seed)
    n = len(lengths)
    if n == 0:
        raise ValueError("no training examples")
    while True:
        if group_by_length:
            yield from length_grouped_batches(lengths, batch_size, rng, chunk_batches)
        else:
            order = list(range(n))
            rng.shuffle(order)
            for s in range(0, max(1, n - batch_size + 1), batch_size):
                yield order[s : s + batch_size]


def padded_positions(lengths, batch_list) -> int:
    """Sum over batches of the pad positions each batch gets (padding to its longest example)."""
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batch_list)


# ---------------------------------------------------------------- models and logits


def load_classifier(folder, num_labels: int, spec: Optional[TaskSpec] = None):
    """A folder as AutoModelForSequenceClassification with `num_labels` outputs (a fresh head where the
    folder has none or another); with `spec`, its label names become the config's id2label."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    import autodistil  # noqa: F401  (registers AutoDistilBert)

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json (expected a Hugging Face folder)")
    v = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh task head is expected, not worth a warning
    kw = {}
    if spec is not None and spec.labels:
        kw = {"id2label": spec.id2label(), "label2id": {n: i for i, n in spec.id2label().items()}}
    if spec is not None and spec.regression:
        kw["problem_type"] = "regression"
    try:
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, **kw)
    finally:
        hf_logging.set_verbosity(v)


def head_mismatch(folder, spec: TaskSpec) -> Optional[str]:
    """None when `folder` is a fine-tuned classifier for `spec` (a *ForSequenceClassification with the
    task's label count and, where both name their labels, the same names in the same order), else
    why it is not."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json (expected a Hugging Face classifier folder)"
    c = json.loads((folder / "config.json").read_text())
    archs = c.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return (
            f"{folder} holds {archs or 'no architecture'}, not a fine-tuned classifier "
            f"(*ForSequenceClassification)"
        )
    id2label = c.get("id2label") or {}
    n = len(id2label) or c.get("num_labels") or 2
    if n != spec.num_labels:
        return f"{folder} has {n} label(s), the task '{spec.name}' needs {spec.num_labels}"
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
    generic = all(x == f"LABEL_{i}" for i, x in enumerate(names))
    if spec.labels and names and not generic and tuple(names) != tuple(spec.labels):
        return (
            f"{folder} names its labels {names}, the task '{spec.name}' has {list(spec.labels)} "
            f"(class ids in sorted label order)"
        )
    return None


def _check_teacher_folder(folder, spec: TaskSpec) -> None:
    """A distillation teacher must carry a trained head for this task, else its logits mean nothing."""
    why = head_mismatch(folder, spec)
    if why:
        raise ValueError(f"distillation teacher: {why}; fine-tune the teacher on the task first")


def takes_token_types(model) -> bool:
    """Whether a model's forward takes token_type_ids (DistilBERT's does not)."""
    import inspect

    return "token_type_ids" in inspect.signature(model.forward).parameters


def model_inputs(model, x, m, tt) -> dict:
    kw = {"input_ids": x, "attention_mask": m}
    if takes_token_types(model):
        kw["token_type_ids"] = tt
    return kw


@torch.no_grad()
def predict_logits(
    model, data: dict, pad_id: int, batch: int = 64, progress: bool = False, desc: str = "logits"
) -> np.ndarray:
    """(N, C) float32 logits in the examples' order; eval mode, length-sorted batches."""
    model.eval()
    n = len(data["labels"])
    order = sorted(range(n), key=lambda i: len(data["input_ids"][i]))  # length-bucketed: less padding
    preds = None
    for s in tqdm(range(0, n, batch), desc=desc, disable=not progress, leave=False):
        idx = order[s : s + batch]
        x, m, tt, _ = batches(data, idx, pad_id)
        o = model(**model_inputs(model, x, m, tt)).logits.float().numpy()
        if preds is None:
            preds = np.zeros((n, o.shape[-1]), dtype=np.float32)
        preds[idx] = o
    return preds if preds is not None else np.zeros((0, 1), dtype=np.float32)


def evaluate_model(model, spec: TaskSpec, data: dict, pad_id: int, batch: int = 64) -> dict:
    return compute_metrics(spec, predict_logits(model, data, pad_id, batch), data["labels"])


_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def weights_identity(folder) -> list:
    """(name, size, mtime_ns) of a model folder's config, weights and tokenizer files: cheap, and
    any rewrite of the folder (a new fine-tuning) changes it."""
    folder = Path(folder)
    files = [
        folder / "config.json",
        *sorted(folder.glob("*.safetensors")),
        *sorted(folder.glob("*.bin")),
        *(folder / f for f in _TOKENIZER_FILES),
    ]
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


def _inputs_digest(data: dict) -> str:
    h = hashlib.sha256()
    for r, ids in enumerate(data["input_ids"]):
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
        if data["token_type_ids"] is not None:
            h.update(np.asarray(data["token_type_ids"][r], dtype=np.int8).tobytes())
        h.update(b"|")
    return h.hexdigest()


def kd_cache_key(
    teacher,
    task: str,
    max_train_examples: Optional[int],
    subset_seed: Optional[int],
    max_seq_len: int,
    inputs_digest: str = "",
) -> str:
    """sha256 naming a teacher's cached train-split logits: the task, the training subset (its size
    and the seed that drew it; None when the whole split is used), the sequence length, the teacher
    folder's weights identity and (when given) a digest of the teacher-tokenized inputs."""
    blob = json.dumps(
        {
            "task": task,
            "max_train_examples": max_train_examples,
            "subset_seed": subset_seed,
            "max_seq_len": max_seq_len,
            "teacher": weights_identity(teacher),
            "inputs": inputs_digest,
            "version": 1,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_teacher_logits(
    teacher,
    spec: TaskSpec,
    t_train: dict,
    pad_id: int,
    key: str,
    batch: int = 128,
    progress: bool = True,
    log=None,
) -> tuple[np.ndarray, dict]:
    """The teacher's logits over `t_train` (its own tokenization), from
    <teacher>/kd_logits/<key>.npy when present, else computed once (eval, no grad) and saved there
    atomically. Returns (logits (N, C) float32, info)."""
    path = Path(teacher) / "kd_logits" / f"{key}.npy"
    n = len(t_train["labels"])
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (n, max(1, spec.num_labels)) and np.isfinite(arr).all():
                return arr.astype(np.float32, copy=False), {"file": str(path), "reused": True, "seconds": 0.0}
            why = f"shape {arr.shape}, expected {(n, max(1, spec.num_labels))}"
        except (OSError, ValueError) as e:
            why = f"{type(e).__name__}: {e}"
        if log:
            log(f"kd logits cache {path} unusable ({why}): recomputing")
    t0 = time.perf_counter()
    with torch.random.fork_rng():  # loading must not move the student's random stream
        model = load_classifier(teacher, spec.num_labels).eval().requires_grad_(False)
    arr = predict_logits(
        model, t_train, pad_id, batch, progress, desc=f"teacher logits ({Path(teacher).name})"
    )
    secs = time.perf_counter() - t0
    saved = True
    try:

        def write(p):
            with open(p, "wb") as f:
                np.save(f, arr, allow_pickle=False)

        atomic_save(path, write)
    except OSError as e:  # a read-only teacher folder: the logits still serve this run
        saved = False
        if log:
            log(f"kd logits not cached ({type(e).__name__}: {e}); computed for this run only")
    return arr, {"file": str(path) if saved else None, "reused": False, "seconds": round(secs, 2)}


# ---------------------------------------------------------------- fine-tuning

RESULTS_FILE = "finetune_results.json"


def reusable_result(out_dir, cfg: FinetuneConfig, ignore: tuple = (), **expect) -> Optional[dict]:
    """The finetune_results.json of a finished fine-tuning in out_dir when it can stand for running
    `cfg` again, else None: the folder holds a model, its recorded config equals cfg (fields named
    in `ignore` aside), it was trained on the same data (the files' contents, not only their names),
    and each `expect` entry equals the recorded value of that name. One rule for every cache of
    fine-tuned models (the pipeline's students, the fine-tuned teacher)."""
    out_dir = Path(out_dir)
    p = out_dir / RESULTS_FILE
    if not (p.is_file() and (out_dir / "config.json").is_file()):
        return None
    try:
        r = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(r, dict) or not isinstance(r.get("config"), dict):
        return None
    want = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in ignore}))
    if {k: v for k, v in r["config"].items() if k not in ignore} != want:
        return None
    if r.get("data_identity") != data_identity(cfg.data):
        return None
    if any(k not in r or r[k] != json.loads(json.dumps(v)) for k, v in expect.items()):
        return None  # a record that lacks an expected entry (written by older code) never counts
    return r


def finetune(cfg: FinetuneConfig, progress: bool = True, extra: Optional[dict] = None, log=print) -> dict:
    """Fine-tune cfg.model on cfg.task and save it (with finetune_results.json) to cfg.out_dir,
    atomically. `extra` is merged into the results (e.g. the identity of a cached teacher)."""
    from transformers import AutoTokenizer

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    spec, ds = load_data(cfg.data)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    train_ds = _subset(ds["train"], cfg.max_train_examples, cfg.seed)
    subset_seed = cfg.seed if len(train_ds) < len(ds["train"]) else None
    seq_len, seq_auto = resolve_seq_len(cfg.max_seq_len, spec, train_ds, tok)
    if seq_auto:
        log(
            f"max_seq_len auto: {seq_len} tokens hold {100 * seq_auto['coverage']:.2f}% of the "
            f"{seq_auto['examples']} train examples whole (longest {seq_auto['longest']})"
        )
    train = encode(spec, train_ds, tok, seq_len)
    # one dev subset whatever the seed: runs with different seeds are scored on the same examples
    dev = encode(spec, _subset(ds["validation"], cfg.max_eval_examples, 0), tok, seq_len)
    model = load_classifier(cfg.model, spec.num_labels, spec)
    use_teacher = bool(cfg.teacher) and (cfg.kd_alpha > 0 or cfg.hidden_weight > 0)
    cached = use_teacher and cfg.kd_cache and cfg.hidden_weight == 0
    teacher = proj = t_logits = t_train = None
    kd_info = None
    if use_teacher:
        _check_teacher_folder(cfg.teacher, spec)
        t_tok = AutoTokenizer.from_pretrained(cfg.teacher)
        t_train = encode(spec, train_ds, t_tok, seq_len)  # the teacher reads its own tokens
        if cfg.hidden_weight > 0 and t_train["input_ids"] != train["input_ids"]:
            raise ValueError(
                f"hidden-state distillation needs the student ({cfg.model}) and the teacher "
                f"({cfg.teacher}) to tokenize alike; their tokenizers differ (use kd_alpha only)"
            )
        if cached:
            key = kd_cache_key(
                cfg.teacher,
                spec.name,
                None if subset_seed is None else cfg.max_train_examples,
                subset_seed,
                seq_len,
                _inputs_digest(t_train),
            )
            t_logits, kd_info = cached_teacher_logits(
                cfg.teacher,
                spec,
                t_train,
                t_tok.pad_token_id,
                key,
                max(cfg.eval_batch_size, 64),
                progress,
                log,
            )
            t_logits = torch.from_numpy(t_logits)
        else:
            with torch.random.fork_rng():  # the same student random stream with or without the cache
                teacher = load_classifier(cfg.teacher, spec.num_labels).eval().requires_grad_(False)
            if cfg.hidden_weight > 0:
                hs, ht = model.config.hidden_size, teacher.config.hidden_size
                proj = torch.nn.Linear(hs, ht) if hs != ht else None
            kd_info = {"file": None, "reused": False, "seconds": None}
    n = len(train["labels"])
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    params = list(model.parameters()) + (list(proj.parameters()) if proj is not None else [])
    decay = [p for p in params if p.dim() >= 2]
    # fused AdamW where supported: on a busy 2-core CPU the per-tensor loop over a 22M-parameter teacher's
    # parameters (half of them the word embeddings) took 5 s a step, the fused step under 0.1 s
    opt = make_optimizer(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        cfg.lr,
        "cpu",
    )
    warm = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    stream = batch_stream([len(x) for x in train["input_ids"]], cfg.batch_size, cfg.seed, cfg.group_by_length)
    pad_tokens = real_tokens = 0
    t0 = time.perf_counter()
    log_rows = []
    model.train()
    for step in tqdm(
        range(total),
        desc=f"fine-tune {Path(cfg.model).name} on {spec.name}",
        disable=not progress,
        leave=False,
    ):
        idx = next(stream)
        x, m, tt, y = batches(train, idx, tok.pad_token_id)
        real = int(m.sum())
        real_tokens += real
        pad_tokens += m.numel() - real
        out = model(
            **model_inputs(model, x, m, tt),
            labels=y,
            output_hidden_states=cfg.hidden_weight > 0 and teacher is not None,
        )
        loss = out.loss
        if t_logits is not None:
            loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * logits_loss(
                t_logits[idx], out.logits, cfg.kd_temperature
            )
        elif teacher is not None:
            with torch.no_grad():
                tx, tm, ttt, _ = batches(t_train, idx, t_tok.pad_token_id)
                t_out = teacher(
                    **model_inputs(teacher, tx, tm, ttt), output_hidden_states=cfg.hidden_weight > 0
                )
            if cfg.kd_alpha > 0:
                loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * logits_loss(
                    t_out.logits, out.logits, cfg.kd_temperature
                )
            if cfg.hidden_weight > 0:
                lm = uniform_layer_map(len(t_out.hidden_states) - 1, len(out.hidden_states) - 1)
                loss = loss + cfg.hidden_weight * hidden_state_loss(
                    t_out.hidden_states, out.hidden_states, lm, proj, m
                )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            log_rows.append({"step": step + 1, "loss": float(loss.detach())})
    train_s = time.perf_counter() - t0
    t_eval = time.perf_counter()
    metrics = evaluate_model(model, spec, dev, tok.pad_token_id, cfg.eval_batch_size)
    eval_s = time.perf_counter() - t_eval
    out_dir = Path(cfg.out_dir)
    result = {
        "task": spec.name,
        "model": str(cfg.model),
        "metrics": metrics,
        "headline": spec.metrics[0],
        "score": metrics[spec.metrics[0]],
        "train_examples": n,
        "dev_examples": len(dev["labels"]),
        "steps": total,
        "epochs_done": round(total / steps_per_epoch, 3),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
        "pad_fraction": round(pad_tokens / max(1, pad_tokens + real_tokens), 4),
        "kd": kd_info,
        "config": asdict(cfg),
        "data_identity": data_identity(cfg.data),
        "max_seq_len": seq_len,
        "max_seq_len_auto": seq_auto,
        "labels": list(spec.labels),
        **(extra or {}),
        "log": log_rows,
    }

    def build(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / RESULTS_FILE).write_text(json.dumps(result, indent=2))

    atomic_dir(out_dir, build)
    return result


def evaluate_folder(folder, data, max_eval_examples: Optional[int] = None, max_seq_len: int = 128) -> dict:
    """Dev metrics of a fine-tuned classifier folder on `data` (a DataConfig, or a built-in task name).
    The folder's head must fit the task (label count and names)."""
    from transformers import AutoTokenizer

    data = data if isinstance(data, DataConfig) else DataConfig(task=data)
    spec, ds = load_data(data)
    why = head_mismatch(folder, spec)
    if why:
        raise ValueError(f"cannot evaluate: {why}")
    tok = AutoTokenizer.from_pretrained(folder)
    dev = encode(spec, _subset(ds["validation"], max_eval_examples, 0), tok, max_seq_len)
    model = load_classifier(folder, spec.num_labels)
    m = evaluate_model(model, spec, dev, tok.pad_token_id)
    return {
        "task": spec.name,
        "model": str(folder),
        "metrics": m,
        "score": m[spec.metrics[0]],
        "headline": spec.metrics[0],
        "dev_examples": len(dev["labels"]),
    }
