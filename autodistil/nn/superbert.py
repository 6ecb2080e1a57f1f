"""Elastic SuperBert: weights sized to the space's maximum, subnets use leading slices.

Parameter names follow Hugging Face's BertModel (without the "bert." prefix) so that a
teacher initialises the supernet by slicing and a subnet exports to a plain BertModel.
Every sliced use goes through ``autodistil.ops`` (the one backend dispatch point).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from .. import ops
from ..space import SearchSpace, SubnetConfig, union_max
from .. import families

DEPTH_MAPPINGS = ("spaced", "first")
CONVENTIONS = (
    "family",
    "positions",
    "vocab_size",
    "max_position",
    "type_vocab_size",
    "embedding_size",
    "pooler",
    "layer_norm_eps",
    "pad_token_id",
)


@dataclass(frozen=True)
class SuperBertConfig:
    """Maximum shape of the supernet (all subnets fit inside it) and the teacher family's
    conventions (autodistil/families.py; the defaults are BERT's)."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    head_dim: int = 64
    vocab_size: int = 30522
    max_position: int = 512
    type_vocab_size: int = 2  # 0: no token-type embedding (DistilBERT)
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0
    attention_dropout: float = 0.0
    pad_token_id: int = 0
    depth_mapping: str = "spaced"
    family: str = "bert"  # the teacher family: its weight names, its plain class on export
    positions: str = "absolute"  # "absolute": 0..T-1 | "padded": pad + cumsum(ids != pad) (RoBERTa)
    embedding_size: Optional[int] = None  # None: embeddings as wide as the subnet's hidden; else this fixed
    # width, then a sliced projection to the hidden width (ELECTRA)
    pooler: bool = True  # tanh(dense(x[:, 0])) (BERT, RoBERTa, XLM-R)

    def __post_init__(self):
        for f in ("layers", "hidden", "heads", "ffn", "head_dim", "vocab_size", "max_position"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"SuperBertConfig.{f}={v!r}: must be a positive integer")
        t, e = self.type_vocab_size, self.embedding_size
        if not isinstance(t, int) or t < 0:
            raise ValueError(f"SuperBertConfig.type_vocab_size={t!r}: must be an integer >= 0 (0: none)")
        if e is not None and (not isinstance(e, int) or e <= 0):
            raise ValueError(f"SuperBertConfig.embedding_size={e!r}: must be None or a positive integer")
        if self.depth_mapping not in DEPTH_MAPPINGS:
            raise ValueError(
                f"depth_mapping {self.depth_mapping!r} is not allowed: choose {list(DEPTH_MAPPINGS)}"
            )
        if self.positions not in families.POSITIONS:
            raise ValueError(
                f"positions {self.positions!r} is not allowed: choose {list(families.POSITIONS)}"
            )
        families.get_family(self.family)
        if self.max_seq_len <= 0:
            raise ValueError(
                f"max_position={self.max_position} leaves no position after pad id "
                f"{self.pad_token_id} ('padded' positions start at pad + 1)"
            )

    @property
    def max_seq_len(self) -> int:
        return families.max_seq_len(self.positions, self.max_position, self.pad_token_id)

    def conventions(self) -> dict:
        """The teacher family's conventions (what a student supernet copies from its teacher's)."""
        return {k: getattr(self, k) for k in CONVENTIONS}

    @classmethod
    def for_spaces(cls, spaces, **kw) -> "SuperBertConfig":
        spaces = list(spaces) if not isinstance(spaces, SearchSpace) else [spaces]
        hd = {s.head_dim for s in spaces}
        if len(hd) != 1:
            raise ValueError(f"spaces disagree on head dim: {sorted(hd)}")
        m = union_max(spaces)
        return cls(
            layers=m.layers,
            hidden=m.hidden,
            heads=m.heads,
            ffn=max(s.max_ffn for s in spaces),
            head_dim=hd.pop(),
            **kw,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def max_subnet(self) -> SubnetConfig:
        return SubnetConfig(self.layers, self.hidden, self.ffn / self.hidden, self.heads)


@dataclass
class SuperBertOutput(ModelOutput):
    """A dict-like output (HF ModelOutput), so DeepSpeed's ZeRO-3 hooks see its tensors."""

    last_hidden_state: torch.Tensor = None  # (B, T, h)
    pooler_output: Optional[torch.Tensor] = None  # (B, h)
    hidden_states: Optional[tuple] = None  # L+1 x (B, T, h): embeddings, then each layer
    qkv: Optional[tuple] = None  # L x (q, k, v), each (B, T, A*d)
    attentions: Optional[tuple] = None  # L x (B, A, T, T)


def depth_map(layers: int, max_layers: int, mode: str = "spaced") -> list[int]:
    """Supernet layer index used by each of the subnet's `layers` layers.
    "spaced": floor(i * L_max / L) (evenly spaced, the released code's rule); "first": i."""
    if not 0 < layers <= max_layers:
        raise ValueError(f"layers={layers} outside 1..{max_layers}")
    if mode == "first":
        return list(range(layers))
    if mode == "spaced":
        return [(i * max_layers) // layers for i in range(layers)]
    raise ValueError(f"depth mapping {mode!r} is not allowed: choose {list(DEPTH_MAPPINGS)}")


class SlicedLinear(nn.Linear):
    """nn.Linear at its maximum size; forward(x, o, i) uses the leading [:o, :i] slice.
    (Parameters are used inside their owning module's forward, so ZeRO-3 gathers them.)"""

    def forward(self, x, out_features=None, in_features=None, activation=None, backend=None):
        o = self.out_features if out_features is None else out_features
        i = self.in_features if in_features is None else in_features
        return ops.sliced_linear(x, self.weight, self.bias, o, i, activation, backend)


class SlicedLayerNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.eps = eps

    def forward(self, x, width, residual=None, backend=None):
        return ops.sliced_layernorm(x, self.weight, self.bias, width, self.eps, residual, backend)


class SlicedEmbedding(nn.Embedding):
    def forward(self, ids, width=None, backend=None):
        return ops.sliced_embedding(ids, self.weight, self.embedding_dim if width is None else width, backend)


class SuperEmbeddings(nn.Module):
    """Word + position (+ token-type) embeddings and their LayerNorm, as wide as the subnet's hidden
    size, or at the fixed ``embedding_size`` followed by a sliced projection to it (ELECTRA)."""

    def __init__(self, c: SuperBertConfig):
        super().__init__()
        self.c = c
        e = c.embedding_size or c.hidden
        self.word_embeddings = SlicedEmbedding(c.vocab_size, e, padding_idx=c.pad_token_id)
        self.position_embeddings = SlicedEmbedding(c.max_position, e)
        self.token_type_embeddings = SlicedEmbedding(c.type_vocab_size, e) if c.type_vocab_size else None
        self.LayerNorm = SlicedLayerNorm(e, c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.project = SlicedLinear(e, c.hidden) if c.embedding_size else None

    def forward(self, ids, type_ids, h, backend):
        c = self.c
        e = c.embedding_size or h
        pos = families.position_ids(ids, c.positions, c.pad_token_id)  # (T,) or (B, T)
        x = self.word_embeddings(ids, e, backend)  # (B, T, e)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(type_ids, e, backend)
        x = x + self.position_embeddings(pos, e, backend)  # (T, e) or (B, T, e)
        x = self.dropout(self.LayerNorm(x, e, backend=backend))
        if self.project is not None:
            x = self.project(x, h, e, backend=backend)  # (B, T, h)
        return x


class _SelfAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        w = c.heads * c.head_dim
        self.query, self.key, self.value = (SlicedLinear(c.hidden, w) for _ in range(3))


def _plain(*modules) -> bool:
    """May these modules' ops run fused, without calling each module's forward? Only when nothing
    would miss its call: each is exactly one of this file's module classes (or nn.Dropout) with the
    forward its class had at import (not a wrapper such as an FSDP1 unit, a LoRA or quantised
    linear, nor a patched class or instance), none has a hook (DeepSpeed ZeRO-3 gathers parameters in
    forward pre-hooks; rewire's importance scores read a forward hook), and no global module hook is
    registered."""
    from torch.nn.modules import module as m

    if (
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    ):
        return False
    return all(
        _OWN_FORWARD.get(type(x)) is type(x).forward
        and "forward" not in x.__dict__
        and not (x._forward_hooks or x._forward_pre_hooks or x._backward_hooks or x._backward_pre_hooks)
        for x in modules
    )


def _no_dropout(d: nn.Dropout) -> bool:
    return d.p == 0 or not d.training


class _Out(nn.Module):
    def __init__(self, i, o, eps, p):
        super().__init__()
        self.dense = SlicedLinear(i, o)
        self.LayerNorm = SlicedLayerNorm(o, eps)
        self.dropout = nn.Dropout(p)

    def forward(self, y, residual, o, i, backend):
        ln = self.LayerNorm
        if _plain(self.dense, ln, self.dropout) and _no_dropout(self.dropout):
            # one autograd Function for linear + residual + LayerNorm (host time; same numbers)
            return ops.sliced_linear_layernorm(
                y, self.dense.weight, self.dense.bias, ln.weight, ln.bias, o, i, ln.eps, residual, backend
            )
        return ln(self.dropout(self.dense(y, o, i, backend=backend)), o, residual, backend)


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = _SelfAttn(c)
        self.output = _Out(c.heads * c.head_dim, c.hidden, c.layer_norm_eps, c.dropout)


class _Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = SlicedLinear(c.hidden, c.ffn)


# the module classes a layer may fuse past, with the forward each had at import
_OWN_FORWARD = {c: c.forward for c in (SlicedLinear, SlicedLayerNorm, nn.Dropout, _Out, _Intermediate)}


class SuperLayer(nn.Module):
    def __init__(self, c: SuperBertConfig):
        super().__init__()
        self.c = c
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Out(c.ffn, c.hidden, c.layer_norm_eps, c.dropout)

    def forward(self, x, key_mask, h, a, f, need_probs, backend):
        B, T, _ = x.shape
        d = self.c.head_dim
        w = a * d
        sa = self.attention.self
        if _plain(sa.query, sa.key, sa.value):  # one autograd Function for the three (host time)
            q, k, v = ops.sliced_qkv(
                x,
                (sa.query.weight, sa.key.weight, sa.value.weight),
                (sa.query.bias, sa.key.bias, sa.value.bias),
                w,
                h,
                backend,
            )  # (B, T, A*d)
        else:
            q, k, v = (m(x, w, h, backend=backend) for m in (sa.query, sa.key, sa.value))
        split = lambda t: t.view(B, T, a, d).transpose(1, 2)  # (B, A, T, d)
        p_drop = self.c.attention_dropout if self.training else 0.0
        ctx, probs = ops.sliced_attention(split(q), split(k), split(v), key_mask, need_probs, p_drop, backend)
        ctx = ctx.transpose(1, 2).reshape(B, T, w)  # (B, T, A*d)
        x = self.attention.output(ctx, x, h, w, backend)  # (B, T, h)
        out, dense = self.output, self.intermediate.dense
        if _plain(self.intermediate, dense, out, out.dense, out.LayerNorm, out.dropout) and _no_dropout(
            out.dropout
        ):
            # the whole FFN block as one autograd Function (host time; same numbers)
            x = ops.sliced_ffn_layernorm(
                x,
                dense.weight,
                dense.bias,
                out.dense.weight,
                out.dense.bias,
                out.LayerNorm.weight,
                out.LayerNorm.bias,
                f,
                h,
                out.LayerNorm.eps,
                backend,
            )
        else:
            z = dense(x, f, h, activation="gelu", backend=backend)  # (B, T, f)
            x = out(z, x, h, f, backend)  # (B, T, h)
        return x, (q, k, v), probs


class _Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(SuperLayer(c) for _ in range(c.layers))


class _Pooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = SlicedLinear(c.hidden, c.hidden)

    def forward(self, x, h, backend):
        return torch.tanh(self.dense(x[:, 0], h, h, backend=backend))  # (B, h)


class SuperBert(nn.Module):
    """Weight-sharing BERT supernet. ``set_subnet(cfg)`` or ``with model.subnet(cfg):``.
    ``backend`` ("torch" | "triton" | "cuda") belongs to the model; None follows the caller's
    ``ops.use_backend(...)`` context (default "torch"). No process-wide setting is read."""

    def __init__(self, config: SuperBertConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        self.backend = backend
        self.embeddings = SuperEmbeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config) if config.pooler else None
        self.apply(self._init_weights)
        self.active = config.max_subnet

    @staticmethod
    def _init_weights(m, std=0.02):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # --- subnet selection ----------------------------------------------------------
    def check_subnet(self, cfg: SubnetConfig) -> SubnetConfig:
        c = self.config
        for name, v, hi in (
            ("layers", cfg.layers, c.layers),
            ("hidden", cfg.hidden, c.hidden),
            ("heads", cfg.heads, c.heads),
            ("ffn width", cfg.ffn, c.ffn),
        ):
            if v > hi:
                raise ValueError(f"subnet {cfg.short()}: {name}={v} exceeds the supernet's maximum {hi}")
        return cfg

    def set_subnet(self, cfg: SubnetConfig) -> None:
        self.active = self.check_subnet(cfg)

    @contextlib.contextmanager
    def subnet(self, cfg: SubnetConfig):
        old = self.active
        self.set_subnet(cfg)
        try:
            yield self
        finally:
            self.active = old

    def layer_indices(self, cfg: SubnetConfig | None = None) -> list[int]:
        cfg = cfg or self.active
        return depth_map(cfg.layers, self.config.layers, self.config.depth_mapping)

    # --- forward -------------------------------------------------------------------
    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        *,
        output_hidden_states=False,
        output_qkv=False,
        output_attentions=False,
        subnet: SubnetConfig | None = None,
    ) -> SuperBertOutput:
        cfg = self.check_subnet(subnet) if subnet is not None else self.active
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            c = self.config
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds the {c.max_seq_len} positions of "
                f"max_position {c.max_position} ({c.positions})"
            )
        h, a, f = cfg.hidden, cfg.heads, cfg.ffn
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        key_mask = None if attention_mask is None else attention_mask
        # resolved once per forward: a recomputed forward (activation checkpointing) runs outside
        # the caller's use_backend() context and must not fall back to another backend
        backend = self.backend or ops.get_backend()
        x = self.embeddings(input_ids, token_type_ids, h, backend)  # (B, T, h)
        hs, qkvs, atts = [x], [], []
        for li in self.layer_indices(cfg):
            x, qkv, probs = self.encoder.layer[li](x, key_mask, h, a, f, output_attentions, backend)
            hs.append(x)
            qkvs.append(qkv)
            atts.append(probs)
        pooled = None if self.pooler is None else self.pooler(x, h, backend)
        return SuperBertOutput(
            x,
            pooled,
            tuple(hs) if output_hidden_states else None,
            tuple(qkvs) if output_qkv else None,
            tuple(atts) if output_attentions else None,
        )

    # --- teacher initialisation ----------------------------------------------------
    @torch.no_grad()
    def load_from_teacher(self, teacher_state: dict) -> None:
        """Initialise by slicing a teacher's state dict: its family's HF model (or task model) or a
        SuperBert's, mapped to BertModel names by autodistil/families.py (leading slices; layer i <- teacher
        layer round(i * (L_t - 1) / (L_max - 1)) when depths differ). For importance-ordered
        slices pass nn.rewire.rewired_teacher_state(state, rewiring)."""
        sd = families.to_bert_names(teacher_state, self.config.family)
        t_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
        L = self.config.layers
        src = [i if t_layers == L else round(i * (t_layers - 1) / max(1, L - 1)) for i in range(L)]
        for name, p in self.named_parameters():
            key = name
            if name.startswith("encoder.layer."):
                parts = name.split(".")
                parts[2] = str(src[int(parts[2])])
                key = ".".join(parts)
            if key not in sd:
                raise ValueError(f"teacher state dict has no '{key}' (needed for supernet '{name}')")
            t = sd[key]
            if any(a > b for a, b in zip(p.shape, t.shape)):
                raise ValueError(
                    f"teacher tensor '{key}' {tuple(t.shape)} is smaller than supernet "
                    f"'{name}' {tuple(p.shape)}: the space exceeds the teacher"
                )
            p.copy_(t[tuple(slice(0, s) for s in p.shape)])
