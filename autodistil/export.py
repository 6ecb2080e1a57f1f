"""Subnet -> standalone Hugging Face model folder (safetensors, tokenizer, no supernet left).

The teacher family's plain class (``BertModel``, ``RobertaModel``, ``XLMRobertaModel``,
``ElectraModel``, ``DistilBertModel``; loads anywhere transformers does) where it can express the
subnet: heads x head_dim == hidden, and for ELECTRA an embedding projection only between different
widths. Otherwise an ``AutoDistilBertModel`` with the family's conventions (needs ``import
autodistil`` before ``AutoModel.from_pretrained``; no ``trust_remote_code``).

``export_first_layers``: a teacher folder of any supported family cut to its first k encoder
layers (the "drop the top layers" baseline), as that family's plain class.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cost import exact_macs
from .io import atomic_dir, atomic_write_json
from . import families
from .nn.superbert import SuperBert
from .space import SubnetConfig

STUDENT_META = "autodistil_student.json"


def subnet_state_dict(model: SuperBert, cfg: SubnetConfig) -> dict:
    """The subnet's weights as a contiguous state dict in BertModel names (SuperBert's; ELECTRA's
    projection is "embeddings.project.*"). Export copies, by design."""
    model.check_subnet(cfg)
    c = model.config
    h, w, f = cfg.hidden, cfg.heads * c.head_dim, cfg.ffn
    e = c.embedding_size or h
    sizes = {  # (out, in) of each sliced parameter by its suffix
        "attention.self.query.weight": (w, h),
        "attention.self.key.weight": (w, h),
        "attention.self.value.weight": (w, h),
        "attention.self.query.bias": (w,),
        "attention.self.key.bias": (w,),
        "attention.self.value.bias": (w,),
        "attention.output.dense.weight": (h, w),
        "attention.output.dense.bias": (h,),
        "attention.output.LayerNorm.weight": (h,),
        "attention.output.LayerNorm.bias": (h,),
        "intermediate.dense.weight": (f, h),
        "intermediate.dense.bias": (f,),
        "output.dense.weight": (h, f),
        "output.dense.bias": (h,),
        "output.LayerNorm.weight": (h,),
        "output.LayerNorm.bias": (h,),
    }
    full = model.state_dict()
    sl = lambda t, shape: t[tuple(slice(0, s) for s in shape)].detach().clone().contiguous()
    out = {}
    for k in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        if f"embeddings.{k}.weight" in full:
            t = full[f"embeddings.{k}.weight"]
            out[f"embeddings.{k}.weight"] = sl(t, (t.shape[0], e))
    for k in ("weight", "bias"):
        out[f"embeddings.LayerNorm.{k}"] = sl(full[f"embeddings.LayerNorm.{k}"], (e,))
    if c.embedding_size:
        out["embeddings.project.weight"] = sl(full["embeddings.project.weight"], (h, e))
        out["embeddings.project.bias"] = sl(full["embeddings.project.bias"], (h,))
    for new, old in enumerate(model.layer_indices(cfg)):
        for suf, shape in sizes.items():
            out[f"encoder.layer.{new}.{suf}"] = sl(full[f"encoder.layer.{old}.{suf}"], shape)
    if c.pooler:
        out["pooler.dense.weight"] = sl(full["pooler.dense.weight"], (h, h))
        out["pooler.dense.bias"] = sl(full["pooler.dense.bias"], (h,))
    return out


def hf_config(model: SuperBert, cfg: SubnetConfig):
    """The family's plain config where it expresses the subnet, else an AutoDistilBertConfig with the
    family's conventions."""
    from .hf_student import AutoDistilBertConfig

    c = model.config
    plain = families.plain_config(c, cfg.layers, cfg.hidden, cfg.heads, cfg.ffn)
    if plain is not None:
        return plain
    return AutoDistilBertConfig(
        vocab_size=c.vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        attention_head_size=c.head_dim,
        intermediate_size=cfg.ffn,
        max_position_embeddings=c.max_position,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id,
        family=c.family,
        positions=c.positions,
        embedding_size=c.embedding_size,
        pooler=c.pooler,
    )


def _load_exactly(student, state: dict, what: str):
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"{what} mapping mismatch: missing {missing}, unexpected {unexpected}")
    return student.eval()


def build_student(model: SuperBert, cfg: SubnetConfig):
    """A standalone HF model holding the subnet's weights: the family's plain class or AutoDistilBertModel."""
    from transformers import AutoModel
    from .hf_student import AutoDistilBertConfig

    hc = hf_config(model, cfg)
    state = subnet_state_dict(model, cfg)
    if not isinstance(hc, AutoDistilBertConfig):
        state = families.from_bert_names(state, model.config.family)
    return _load_exactly(AutoModel.from_config(hc), state, "export")


def _student_macs(sub: SubnetConfig, head_dim: int, seq_len: int, pooler: bool, embedding_size) -> int:
    """Matmul MACs of one sequence: encoder layers, pooler, and an embedding projection (ELECTRA)."""
    proj = seq_len * embedding_size * sub.hidden if embedding_size else 0
    return exact_macs(sub, head_dim, seq_len, pooler) + proj


def export_subnet(
    model: SuperBert,
    cfg: SubnetConfig,
    out_dir,
    tokenizer=None,
    seq_len: int = 128,
    extra: dict | None = None,
) -> Path:
    """Write the subnet as a HF folder atomically (the folder appears only when complete).
    autodistil_student.json records the subnet, the family and the class."""
    student = build_student(model, cfg)
    c = model.config
    macs = _student_macs(cfg, c.head_dim, seq_len, c.pooler, c.embedding_size)
    cls = type(student).__name__

    def build(tmp: Path):
        student.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / STUDENT_META,
            {
                "subnet": cfg.as_dict(),
                "head_dim": c.head_dim,
                "family": c.family,
                "model_class": cls,
                "needs_autodistil": cls == "AutoDistilBertModel",
                "macs_per_seq": macs,
                "seq_len": seq_len,
                "params": sum(p.numel() for p in student.parameters()),
                **(extra or {}),
            },
        )

    return atomic_dir(Path(out_dir), build)


class _OnnxWrap(torch.nn.Module):
    """The encoder with positional inputs (input_ids, attention_mask[, token_type_ids]) and outputs
    (last_hidden_state[, pooler_output]): token types and pooler only where the family has them."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.token_types = getattr(m.config, "type_vocab_size", 0) > 0  # none in DistilBERT
        self.pooled = getattr(m, "pooler", None) is not None  # none in ELECTRA, DistilBERT

    def forward(self, input_ids, attention_mask, *token_type_ids):
        kw = {"token_type_ids": token_type_ids[0]} if self.token_types else {}
        o = self.m(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return (o.last_hidden_state, o.pooler_output) if self.pooled else (o.last_hidden_state,)


def onnx_export_model(model, out_path, seq_len: int = 128, opset: int = 17) -> Path:
    """A HF encoder -> ONNX (inputs input_ids, attention_mask, token_type_ids where the family has
    token types; outputs last_hidden_state, pooler_output where it has a pooler; dynamic batch/seq)."""
    from .io import atomic_save

    ids = torch.ones(1, seq_len, dtype=torch.long)
    model = model.float().cpu().eval()
    wrap = _OnnxWrap(model).eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if wrap.token_types else [])
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if wrap.token_types else ())
    dyn = {n: {0: "batch", 1: "seq"} for n in names}
    outputs = ["last_hidden_state"] + (["pooler_output"] if wrap.pooled else [])
    return atomic_save(
        Path(out_path),
        lambda p: torch.onnx.export(
            wrap,
            args,
            p,
            input_names=names,
            output_names=outputs,
            dynamic_axes=dyn,
            opset_version=opset,
            dynamo=False,
        ),
    )


def export_onnx(folder, out_path=None, seq_len: int = 128, opset: int = 17) -> Path:
    """Export a student folder to <folder>/model.onnx."""
    from transformers import AutoModel

    folder = Path(folder)
    model = AutoModel.from_pretrained(folder)
    return onnx_export_model(model, out_path or folder / "model.onnx", seq_len, opset)


def export_first_layers(folder, k: int, out_dir, seq_len: int = 128) -> Path:
    """A Hugging Face folder of a supported family (its plain model, or a *For... model with that
    body) -> the family's plain class (BertModel, RobertaModel, XLMRobertaModel, ElectraModel,
    DistilBertModel) holding the embeddings, encoder layers 0..k-1 and the pooler where the family
    has one (config depth k), the tokenizer copied, and an autodistil_student.json naming where it
    came from. Written atomically. The baseline "drop the teacher's top layers". A RoBERTa / XLM-R
    source without pooler weights (their pretraining checkpoints) keeps the pooler AutoModel gives
    it, randomly initialised; their sequence classifiers do not read it. A BERT source must have one."""
    from transformers.utils import logging as hf_logging
    from .teacher import read_family_config, teacher_hash

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json (expected a Hugging Face model folder)")
    fam, src_cfg = read_family_config(str(folder))
    shape = families.teacher_shape(src_cfg)
    n_layers = shape.layers
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ValueError(
            f"k={k!r} is outside 1..{n_layers}: the model in {folder} has {n_layers} encoder layers"
        )
    v = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a task head in the source is expected to be left out
    try:
        src, info = fam.model_cls().from_pretrained(folder, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(v)
    unused = ("position_ids", "token_type_ids") + (() if fam.head_reads_pooler else ("pooler.",))
    missing = [n for n in info.get("missing_keys", []) if not any(u in n for u in unused)]
    if missing:
        raise ValueError(
            f"{folder} lacks {fam.model_class} weights {sorted(missing)[:6]}"
            f"{' ...' if len(missing) > 6 else ''}: they would be random in the export"
        )
    d = {
        k_: v_
        for k_, v_ in src.config.to_dict().items()  # a bare encoder: no task-head settings
        if k_ not in ("id2label", "label2id", "num_labels", "problem_type", "finetuning_task")
    }
    cfg = type(src.config).from_dict({**d, fam.layers_key: k, "architectures": [fam.model_class]})
    keep = {}
    for n, t in src.state_dict().items():
        if n.startswith(fam.layer_prefix) and int(n[len(fam.layer_prefix) :].split(".")[0]) >= k:
            continue
        keep[n] = t.detach().clone().contiguous()
    model = _load_exactly(fam.model_cls()(cfg), keep, "export_first_layers")
    conv = families.supernet_conventions(cfg)
    sub = shape.as_subnet(k)
    macs = _student_macs(sub, shape.head_dim, seq_len, conv["pooler"], conv["embedding_size"])
    has_tok = any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))

    def build(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        if has_tok:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(folder).save_pretrained(tmp)
        atomic_write_json(
            tmp / STUDENT_META,
            {
                "kind": "first_layers",
                "source": str(folder),
                "source_sha256": teacher_hash(str(folder)),
                "layers_kept": k,
                "source_layers": n_layers,
                "subnet": sub.as_dict(),
                "head_dim": shape.head_dim,
                "family": fam.name,
                "model_class": fam.model_class,
                "needs_autodistil": False,
                "macs_per_seq": macs,
                "seq_len": seq_len,
                "params": sum(p.numel() for p in model.parameters()),
                "tokenizer": has_tok,
            },
        )

    return atomic_dir(Path(out_dir), build)
