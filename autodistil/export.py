"""Subnet -> standalone Hugging Face model folder (safetensors, tokenizer, no supernet left).

A plain ``BertModel`` when heads x head_dim == hidden (loads anywhere transformers does);
otherwise an ``AutoDistilBertModel`` (needs ``import autodistil`` before
``AutoModel.from_pretrained``; no ``trust_remote_code``).

``export_first_layers``: a BERT folder cut to its first k encoder layers (the "drop the top
layers" baseline), also a plain ``BertModel`` folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cost import exact_cost
from .io import atomic_dir, atomic_write_json
from .nn.superbert import SuperBert
from .space import SubnetConfig

STUDENT_META = "autodistil_student.json"


def subnet_state_dict(model: SuperBert, cfg: SubnetConfig) -> dict:
    """The subnet's weights as a contiguous BertModel-named state dict (export copies, by design)."""
    model.check_subnet(cfg)
    c = model.config
    h, w, f = cfg.hidden, cfg.heads * c.head_dim, cfg.ffn
    sizes = {  # (out, in) of each sliced parameter by its suffix
        "attention.self.query.weight": (w, h), "attention.self.key.weight": (w, h), "attention.self.value.weight": (w, h),
        "attention.self.query.bias": (w,), "attention.self.key.bias": (w,), "attention.self.value.bias": (w,),
        "attention.output.dense.weight": (h, w), "attention.output.dense.bias": (h,),
        "attention.output.LayerNorm.weight": (h,), "attention.output.LayerNorm.bias": (h,),
        "intermediate.dense.weight": (f, h), "intermediate.dense.bias": (f,),
        "output.dense.weight": (h, f), "output.dense.bias": (h,),
        "output.LayerNorm.weight": (h,), "output.LayerNorm.bias": (h,),
    }
    full = model.state_dict()
    sl = lambda t, shape: t[tuple(slice(0, s) for s in shape)].detach().clone().contiguous()
    out = {}
    for k in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        t = full[f"embeddings.{k}.weight"]
        out[f"embeddings.{k}.weight"] = sl(t, (t.shape[0], h))
    for k in ("weight", "bias"):
        out[f"embeddings.LayerNorm.{k}"] = sl(full[f"embeddings.LayerNorm.{k}"], (h,))
    for new, old in enumerate(model.layer_indices(cfg)):
        for suf, shape in sizes.items():
            out[f"encoder.layer.{new}.{suf}"] = sl(full[f"encoder.layer.{old}.{suf}"], shape)
    out["pooler.dense.weight"] = sl(full["pooler.dense.weight"], (h, h))
    out["pooler.dense.bias"] = sl(full["pooler.dense.bias"], (h,))
    return out


def hf_config(model: SuperBert, cfg: SubnetConfig):
    from transformers import BertConfig
    from .nn.hf import AutoDistilBertConfig
    c = model.config
    common = dict(vocab_size=c.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, max_position_embeddings=c.max_position,
                  type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id)
    if cfg.heads * c.head_dim == cfg.hidden:
        return BertConfig(hidden_act="gelu", **common)
    return AutoDistilBertConfig(attention_head_size=c.head_dim, **common)


def build_student(model: SuperBert, cfg: SubnetConfig):
    """A standalone HF model (BertModel or AutoDistilBertModel) holding the subnet's weights."""
    from transformers import BertModel
    from .nn.hf import AutoDistilBertModel
    hc = hf_config(model, cfg)
    cls = AutoDistilBertModel if hc.model_type == "autodistil_bert" else BertModel
    student = cls(hc)
    missing, unexpected = student.load_state_dict(subnet_state_dict(model, cfg), strict=False)
    missing = [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"export mapping mismatch: missing {missing}, unexpected {unexpected}")
    return student.eval()


def export_subnet(model: SuperBert, cfg: SubnetConfig, out_dir, tokenizer=None, seq_len: int = 128,
                  extra: dict | None = None) -> Path:
    """Write the subnet as a HF folder atomically (the folder appears only when complete)."""
    student = build_student(model, cfg)
    cost = exact_cost(cfg, model.config.head_dim, seq_len, model.config.vocab_size, model.config.max_position,
                      model.config.type_vocab_size)

    def build(tmp: Path):
        student.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / STUDENT_META, {
            "subnet": cfg.as_dict(), "head_dim": model.config.head_dim, "model_class": type(student).__name__,
            "needs_autodistil": type(student).__name__ != "BertModel", "macs_per_seq": cost.macs,
            "seq_len": seq_len, "params": cost.params, **(extra or {})})
    return atomic_dir(Path(out_dir), build)


class _OnnxWrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask, token_type_ids):
        o = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return o.last_hidden_state, o.pooler_output


def onnx_export_model(model, out_path, seq_len: int = 128, opset: int = 17) -> Path:
    """A HF encoder -> ONNX (inputs input_ids, attention_mask, token_type_ids; dynamic batch/seq)."""
    from .io import atomic_save
    ids = torch.ones(1, seq_len, dtype=torch.long)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
           "token_type_ids": {0: "batch", 1: "seq"}}
    model = model.float().cpu().eval()
    wrap = _OnnxWrap(model).eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    return atomic_save(Path(out_path), lambda p: torch.onnx.export(
        wrap, (ids, torch.ones_like(ids), torch.zeros_like(ids)), p, input_names=list(dyn),
        output_names=["last_hidden_state", "pooler_output"], dynamic_axes=dyn, opset_version=opset, dynamo=False))


def export_onnx(folder, out_path=None, seq_len: int = 128, opset: int = 17) -> Path:
    """Export a student folder to <folder>/model.onnx."""
    from transformers import AutoModel
    folder = Path(folder)
    model = AutoModel.from_pretrained(folder)
    return onnx_export_model(model, out_path or folder / "model.onnx", seq_len, opset)


def export_first_layers(folder, k: int, out_dir, seq_len: int = 128) -> Path:
    """A Hugging Face BERT folder (BertModel, or a *ForSequenceClassification etc. with a bert
    encoder) -> a plain ``BertModel`` folder holding the embeddings, encoder layers 0..k-1 and the
    pooler (config num_hidden_layers=k), the tokenizer copied, and an autodistil_student.json
    naming where it came from. Written atomically. The baseline "drop the teacher's top layers"."""
    import json
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging
    from .teacher import teacher_hash
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json (expected a Hugging Face BERT folder)")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") != "bert":
        raise ValueError(f"{folder} is not a BERT folder (model_type '{raw.get('model_type')}'): export_first_layers "
                         f"takes a BertModel or a *For... model with a bert encoder")
    n_layers = int(raw.get("num_hidden_layers", 0))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ValueError(f"k={k!r} is outside 1..{n_layers}: the model in {folder} has {n_layers} encoder layers")
    v = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a task head in the source is expected to be left out
    try:
        src, info = BertModel.from_pretrained(folder, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(v)
    missing = [n for n in info.get("missing_keys", []) if "position_ids" not in n and "token_type_ids" not in n]
    if missing:
        raise ValueError(f"{folder} lacks BertModel weights {sorted(missing)[:6]}{' ...' if len(missing) > 6 else ''}: "
                         f"they would be random in the export")
    d = {k_: v_ for k_, v_ in src.config.to_dict().items()  # a bare encoder: no task-head settings
         if k_ not in ("id2label", "label2id", "num_labels", "problem_type", "finetuning_task")}
    cfg = BertConfig.from_dict({**d, "num_hidden_layers": k, "architectures": ["BertModel"]})
    keep = {}
    for n, t in src.state_dict().items():
        if n.startswith("encoder.layer.") and int(n.split(".")[2]) >= k:
            continue
        keep[n] = t.detach().clone().contiguous()
    model = BertModel(cfg)
    miss, unexpected = model.load_state_dict(keep, strict=False)
    miss = [n for n in miss if "position_ids" not in n and "token_type_ids" not in n]
    if miss or unexpected:
        raise RuntimeError(f"export_first_layers mapping mismatch: missing {miss}, unexpected {unexpected}")
    model.eval()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    sub = SubnetConfig(k, cfg.hidden_size, cfg.intermediate_size / cfg.hidden_size, cfg.num_attention_heads)
    cost = exact_cost(sub, head_dim, seq_len, cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size)
    has_tok = any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))

    def build(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        if has_tok:
            from transformers import AutoTokenizer
            AutoTokenizer.from_pretrained(folder).save_pretrained(tmp)
        atomic_write_json(tmp / STUDENT_META, {
            "kind": "first_layers", "source": str(folder), "source_sha256": teacher_hash(str(folder)),
            "layers_kept": k, "source_layers": n_layers, "subnet": sub.as_dict(), "head_dim": head_dim,
            "model_class": "BertModel", "needs_autodistil": False, "macs_per_seq": cost.macs, "seq_len": seq_len,
            "params": cost.params, "tokenizer": has_tok})
    return atomic_dir(Path(out_dir), build)
