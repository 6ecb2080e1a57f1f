"""Teacher families: the one place that knows how a Hugging Face encoder maps into SuperBert.

Supported (by ``model_type``): BERT ("bert"), RoBERTa ("roberta"), XLM-R ("xlm-roberta"),
ELECTRA ("electra") and DistilBERT ("distilbert"), each with exact GELU ("gelu": the kernels
compute erf-GELU) and absolute learned positions. For each family this module gives

- the teacher's shape (``teacher_shape``: DistilBERT names it n_layers / dim / n_heads / hidden_dim);
- the supernet conventions (``supernet_conventions``: SuperBertConfig keyword arguments):
  positions 0..T-1 ("absolute"; BERT, ELECTRA, DistilBERT) or pad + 1 + the running count of
  non-pad tokens, pads at pad ("padded"; RoBERTa, XLM-R: HF's create_position_ids_from_input_ids),
  token types (none in DistilBERT), ELECTRA's embedding width and its projection to the hidden
  size (when they differ), the pooler (BERT, RoBERTa, XLM-R), pad id, LayerNorm eps, vocabulary
  and position table sizes;
- the mapping of a family's state dict to the BertModel names SuperBert uses (``to_bert_names``)
  and back (``from_bert_names``, for export);
- the family's plain transformers class and its config for an exported subnet (``plain_config``).

Anything else is refused with one line naming what was found and what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .space import TeacherShape

POSITIONS = ("absolute", "padded")
GELU = "gelu"  # exact (erf) GELU in transformers' ACT2FN; "gelu_new" etc. are tanh approximations

_BERT_SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
# DistilBERT layer tensors (after "transformer.layer.<i>.") -> BertModel's (after "encoder.layer.<i>.")
_DISTIL_LAYER = (
    ("attention.q_lin.", "attention.self.query."),
    ("attention.k_lin.", "attention.self.key."),
    ("attention.v_lin.", "attention.self.value."),
    ("attention.out_lin.", "attention.output.dense."),
    ("sa_layer_norm.", "attention.output.LayerNorm."),
    ("ffn.lin1.", "intermediate.dense."),
    ("ffn.lin2.", "output.dense."),
    ("output_layer_norm.", "output.LayerNorm."),
)


@dataclass(frozen=True)
class Family:
    """How one Hugging Face encoder family is laid out."""

    name: str  # config.model_type
    model_class: str  # its plain transformers class
    prefix: str  # the body's attribute in its task models ("roberta." ...)
    positions: str  # "absolute" | "padded"
    pooler: bool  # the plain class has a pooler (tanh(dense(x[:, 0])))
    token_types: bool  # it has a token-type embedding
    head_reads_pooler: bool = False  # its sequence classifier reads the pooler (BERT); RoBERTa's does
    # not, and its pretraining checkpoints carry no pooler weights
    shape_keys: tuple = _BERT_SHAPE_KEYS  # config keys of (layers, hidden, heads, ffn)
    act_key: str = "hidden_act"
    layer_prefix: str = "encoder.layer."
    layer_renames: tuple = ()  # (family suffix, BertModel suffix) of layer tensors
    top_renames: tuple = ()  # (family prefix, BertModel prefix) of other tensors

    def model_cls(self):
        import transformers

        return getattr(transformers, self.model_class)

    @property
    def layers_key(self) -> str:
        return self.shape_keys[0]


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "bert", "BertModel", "bert", "absolute", pooler=True, token_types=True, head_reads_pooler=True
        ),
        Family("roberta", "RobertaModel", "roberta", "padded", pooler=True, token_types=True),
        Family("xlm-roberta", "XLMRobertaModel", "roberta", "padded", pooler=True, token_types=True),
        Family(
            "electra",
            "ElectraModel",
            "electra",
            "absolute",
            pooler=False,
            token_types=True,
            top_renames=(("embeddings_project.", "embeddings.project."),),
        ),
        Family(
            "distilbert",
            "DistilBertModel",
            "distilbert",
            "absolute",
            pooler=False,
            token_types=False,
            shape_keys=("n_layers", "dim", "n_heads", "hidden_dim"),
            act_key="activation",
            layer_prefix="transformer.layer.",
            layer_renames=_DISTIL_LAYER,
        ),
    )
}


def _as_dict(config) -> dict:
    return config if isinstance(config, dict) else config.to_dict()


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"family '{name}' is not supported; supported families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(config, what: str = "teacher") -> Family:
    """The family of a Hugging Face config (a PretrainedConfig or its dict), refusing any other
    model_type, an activation other than exact GELU, and relative position embeddings."""
    d = _as_dict(config)
    mt = d.get("model_type")
    if mt not in FAMILIES:
        raise ValueError(
            f"{what}: model_type '{mt}' is not supported; supported families: {', '.join(FAMILIES)}"
        )
    f = FAMILIES[mt]
    act = d.get(f.act_key, GELU)
    if act != GELU:
        raise ValueError(
            f"{what}: {f.act_key} '{act}' is not supported: autodistil's kernels compute exact "
            f"(erf) GELU, {f.act_key} '{GELU}'"
        )
    pe = d.get("position_embedding_type") or "absolute"
    if pe != "absolute":
        raise ValueError(f"{what}: position_embedding_type '{pe}' is not supported: absolute positions only")
    return f


def teacher_shape(config) -> TeacherShape:
    """(layers, hidden, heads, ffn) of a supported family's config."""
    f = family_of(config)
    d = _as_dict(config)
    return TeacherShape(*(int(d[k]) for k in f.shape_keys))


def supernet_conventions(config) -> dict:
    """SuperBertConfig keyword arguments that make a supernet compute like this family's model:
    family, positions, vocab_size, max_position, type_vocab_size (0: none), embedding_size (None:
    the hidden width), pooler, layer_norm_eps, pad_token_id."""
    f = family_of(config)
    d = _as_dict(config)
    hidden = int(d[f.shape_keys[1]])
    emb = d.get("embedding_size") if f.name == "electra" else None
    pad = d.get("pad_token_id")
    if pad is None:
        if f.positions == "padded":
            raise ValueError(
                f"teacher: a {f.name} config needs pad_token_id (its positions count the non-pad tokens)"
            )
        pad = 0
    return dict(
        family=f.name,
        positions=f.positions,
        vocab_size=int(d["vocab_size"]),
        max_position=int(d["max_position_embeddings"]),
        type_vocab_size=int(d.get("type_vocab_size", 2)) if f.token_types else 0,
        embedding_size=int(emb) if emb is not None and int(emb) != hidden else None,
        pooler=f.pooler,
        layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(pad),
    )


def _rename(key: str, pairs, reverse: bool) -> str:
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        if key.startswith(src):
            return dst + key[len(src) :]
    return key


def _is_body(key: str) -> bool:
    return key.startswith(("embeddings.", "encoder.layer.", "pooler."))


def to_bert_names(state: dict, family: str) -> dict:
    """A family's state dict (its plain model, or a task model with its "<prefix>." body) in the
    BertModel names SuperBert uses; task heads dropped. Keys already in those names pass unchanged."""
    f = get_family(family)
    out = {}
    for k, v in state.items():
        if k.startswith(f.prefix + "."):
            k = k[len(f.prefix) + 1 :]
        k = _rename(k, f.top_renames, reverse=False)
        if k.startswith(f.layer_prefix) and f.layer_prefix != "encoder.layer.":
            i, rest = k[len(f.layer_prefix) :].split(".", 1)
            k = f"encoder.layer.{i}." + _rename(rest, f.layer_renames, reverse=False)
        if _is_body(k):
            out[k] = v
    return out


def from_bert_names(state: dict, family: str) -> dict:
    """The inverse of ``to_bert_names``: BertModel names -> the family's plain-class names."""
    f = get_family(family)
    out = {}
    for k, v in state.items():
        k = _rename(k, f.top_renames, reverse=True)
        if k.startswith("encoder.layer.") and f.layer_prefix != "encoder.layer.":
            i, rest = k[len("encoder.layer.") :].split(".", 1)
            k = f"{f.layer_prefix}{i}." + _rename(rest, f.layer_renames, reverse=True)
        out[k] = v
    return out


def plain_config(c, layers: int, hidden: int, heads: int, ffn: int):
    """The family's plain transformers config for a model of this shape whose conventions are
    those of SuperBertConfig `c`, or None where that class cannot express it: heads x head_dim !=
    hidden, or (ELECTRA) a projection between equal embedding and hidden widths."""
    f = get_family(c.family)
    if heads * c.head_dim != hidden or (c.embedding_size is not None and c.embedding_size == hidden):
        return None
    import transformers

    if f.name == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=c.vocab_size,
            dim=hidden,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=ffn,
            max_position_embeddings=c.max_position,
            pad_token_id=c.pad_token_id,
            activation=GELU,
            sinusoidal_pos_embds=False,
        )  # the (sliced) position table is stored as learned weights
    common = dict(
        vocab_size=c.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=c.max_position,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps,
        pad_token_id=c.pad_token_id,
        hidden_act=GELU,
    )
    if f.name == "electra":
        common["embedding_size"] = c.embedding_size or hidden
    cls = {
        "bert": "BertConfig",
        "roberta": "RobertaConfig",
        "xlm-roberta": "XLMRobertaConfig",
        "electra": "ElectraConfig",
    }[f.name]
    return getattr(transformers, cls)(**common)


def position_ids(ids: torch.Tensor, positions: str, pad_token_id: int) -> torch.Tensor:
    """(T,) 0..T-1 ("absolute"), or (B, T) pad + cumsum(ids != pad), pads at pad ("padded": exactly
    HF's create_position_ids_from_input_ids, RoBERTa / XLM-R)."""
    if positions == "absolute":
        return torch.arange(ids.shape[1], device=ids.device)  # (T,)
    mask = ids.ne(pad_token_id).int()  # (B, T)
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + pad_token_id  # (B, T)


def max_seq_len(positions: str, max_position: int, pad_token_id: int) -> int:
    """The longest sequence the position table covers ("padded" positions start at pad + 1)."""
    return max_position - (pad_token_id + 1 if positions == "padded" else 0)


__all__ = [
    "FAMILIES",
    "Family",
    "POSITIONS",
    "family_of",
    "from_bert_names",
    "get_family",
    "max_seq_len",
    "plain_config",
    "position_ids",
    "supernet_conventions",
    "teacher_shape",
    "to_bert_names",
]
