"""Importance-ordered ("rewired") teacher initialisation of a supernet (DynaBERT-style).

A subnet uses the leading slices of the supernet's weights: hidden features [:h], heads [:a] and
FFN neurons [:f] of every layer. Slicing the teacher as it is keeps arbitrary leading features.
Rewiring first permutes the teacher so that the leading ones are its most important, measured
on its own activations over a few blocks of the training corpus:

- hidden feature j: mean |x_j| over valid tokens of the residual stream (embedding LayerNorm
  output and every layer's output), summed over those L+1 points (keeps the few outlier
  features of BERT-family models inside every slice);
- head h of layer l: mean over valid tokens of ||ctx_h @ W_o[:, h-block]^T||_2, the L2 norm of
  that head's contribution to the attention output;
- FFN neuron n of layer l: mean |gelu(x W1 + b1)_n| * ||W2[:, n]||_2.

The permutation is function-preserving: with new feature j = teacher feature hidden[j] (and
likewise for heads and neurons), the permuted teacher computes the same hidden states and pooler
output, with features reordered the same way. LayerNorm statistics do not depend on the order
of features, so permuting the residual stream is exact.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Optional

import torch

_EMB_MATRICES = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
)
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def _check_perm(p, n: Optional[int], what: str) -> torch.Tensor:
    p = torch.as_tensor(p).detach().cpu()
    if p.dim() != 1 or p.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"Rewiring.{what} must be a 1-D integer tensor, got {p.dtype} of shape {tuple(p.shape)}"
        )
    p = p.long()
    if n is not None and p.numel() != n:
        raise ValueError(f"Rewiring.{what} has {p.numel()} entries, expected {n}")
    if not torch.equal(torch.sort(p).values, torch.arange(p.numel())):
        raise ValueError(f"Rewiring.{what} is not a permutation of 0..{p.numel() - 1}")
    return p


@dataclass(frozen=True)
class Rewiring:
    """Orderings of a teacher's features, most important first. Entry j of each permutation is
    the teacher index that moves to position j: hidden (H,), heads[l] (A,), ffn[l] (F,) for every
    teacher layer l. `note` says how the orderings were obtained."""

    hidden: torch.Tensor
    heads: tuple
    ffn: tuple
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "hidden", _check_perm(self.hidden, None, "hidden"))
        heads, ffn = tuple(self.heads), tuple(self.ffn)
        if len(heads) != len(ffn) or not heads:
            raise ValueError(
                f"Rewiring needs one head and one FFN permutation per teacher layer, got "
                f"{len(heads)} and {len(ffn)}"
            )
        object.__setattr__(
            self, "heads", tuple(_check_perm(p, None, f"heads[{l}]") for l, p in enumerate(heads))
        )
        object.__setattr__(self, "ffn", tuple(_check_perm(p, None, f"ffn[{l}]") for l, p in enumerate(ffn)))

    @property
    def layers(self) -> int:
        return len(self.heads)

    def keep_heads(self, layers) -> "Rewiring":
        """The same orderings with the heads of teacher `layers` (negative: from the end) left in
        the teacher's order."""
        keep = {l % self.layers for l in layers}
        if not keep:
            return self
        heads = [torch.arange(p.numel()) if l in keep else p for l, p in enumerate(self.heads)]
        return Rewiring(
            self.hidden,
            heads,
            self.ffn,
            f"{self.note}; heads of teacher layer {sorted(keep)} in the teacher's order",
        )

    def reversed(self) -> "Rewiring":
        """The opposite order (least important first): a control, never an initialisation."""
        return Rewiring(
            self.hidden.flip(0),
            [p.flip(0) for p in self.heads],
            [p.flip(0) for p in self.ffn],
            f"reversed ({self.note})",
        )

    def to_dict(self) -> dict:
        return {
            "hidden": self.hidden.tolist(),
            "heads": [p.tolist() for p in self.heads],
            "ffn": [p.tolist() for p in self.ffn],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Rewiring":
        try:
            return cls(
                torch.tensor(d["hidden"]),
                [torch.tensor(p) for p in d["heads"]],
                [torch.tensor(p) for p in d["ffn"]],
                str(d.get("note", "")),
            )
        except KeyError as e:
            raise ValueError(f"rewiring description lacks {e}; it needs hidden, heads, ffn") from None

    @classmethod
    def from_importance(cls, imp: "Importance", note: str = "") -> "Rewiring":
        """Descending importance; ties keep the teacher's order (stable sort)."""
        order = lambda s: torch.argsort(s, descending=True, stable=True)
        return cls(order(imp.hidden), [order(s) for s in imp.heads], [order(s) for s in imp.ffn], note)


@dataclass(frozen=True)
class Importance:
    """Importance scores (higher = keep first): hidden (H,), heads (L, A), ffn (L, F); fp32."""

    hidden: torch.Tensor
    heads: torch.Tensor
    ffn: torch.Tensor
    tokens: int


# --- measuring ------------------------------------------------------------------------------
def _as_superbert(teacher):
    from .superbert import SuperBert

    net = getattr(teacher, "net", teacher)  # TeacherNet holds a SuperBert at exactly its shape
    if not isinstance(net, SuperBert):
        raise TypeError(f"importance is measured on a SuperBert or TeacherNet, got {type(teacher).__name__}")
    if net.active != net.config.max_subnet:
        raise ValueError(
            f"importance needs the teacher at its full shape, but subnet {net.active.short()} is active"
        )
    return net


@torch.no_grad()
def measure_importance(teacher, batches) -> Importance:
    """Importance scores of a teacher (TeacherNet, or a SuperBert at its full shape) from its
    activations on `batches`, an iterable of (input_ids (B, T), attention_mask (B, T)).
    Computed in fp32 with autocast off, in eval mode, on the device of the teacher's weights."""
    net = _as_superbert(teacher)
    c = net.config
    L, H, A, F, d = c.layers, c.hidden, c.heads, c.ffn, c.head_dim
    dev = next(net.parameters()).device
    hidden = torch.zeros(H, dtype=torch.float64, device=dev)
    heads = torch.zeros(L, A, dtype=torch.float64, device=dev)
    ffn_act = torch.zeros(L, F, dtype=torch.float64, device=dev)
    cur = {}
    hooks = []
    for l, layer in enumerate(net.encoder.layer):
        # attention output projection: its input is the per-head context (B, T, A*d);
        # intermediate dense: its output is gelu(x W1 + b1) (B, T, F) (the activation is fused)
        hooks.append(
            layer.attention.output.dense.register_forward_hook(
                lambda m, args, out, l=l: cur.__setitem__(("ctx", l), args[0])
            )
        )
        hooks.append(
            layer.intermediate.dense.register_forward_hook(
                lambda m, args, out, l=l: cur.__setitem__(("ffn", l), out)
            )
        )
    w_o = [
        layer.attention.output.dense.weight.float().view(H, A, d) for layer in net.encoder.layer
    ]  # (H, A, d)
    was_training = net.training
    net.eval()
    tokens = 0
    try:
        with (
            torch.autocast(dev.type, enabled=False)
            if dev.type in ("cpu", "cuda")
            else contextlib.nullcontext()
        ):
            for ids, mask in batches:
                ids = ids.to(dev)
                mask = torch.ones_like(ids) if mask is None else mask.to(dev)
                m = mask.to(torch.float64)  # (B, T)
                n = float(m.sum())
                if n == 0:
                    continue
                tokens += int(n)
                cur.clear()
                out = net(ids, mask, output_hidden_states=True)
                for x in out.hidden_states:  # L+1 x (B, T, H)
                    hidden += torch.einsum("bt,bth->h", m, x.double().abs())
                for l in range(L):
                    B, T, _ = cur[("ctx", l)].shape
                    ctx = cur[("ctx", l)].float().reshape(B, T, A, d)
                    contrib = torch.einsum("btad,had->btah", ctx, w_o[l]).norm(dim=-1)  # (B, T, A)
                    heads[l] += torch.einsum("bt,bta->a", m, contrib.double())
                    ffn_act[l] += torch.einsum("bt,btf->f", m, cur[("ffn", l)].double().abs())
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    if tokens == 0:
        raise ValueError("importance needs at least one valid (unmasked) token")
    w2_norm = torch.stack(
        [layer.output.dense.weight.double().norm(dim=0) for layer in net.encoder.layer]
    )  # (L, F)
    return Importance(
        (hidden / tokens).float().cpu(),
        (heads / tokens).float().cpu(),
        (ffn_act / tokens * w2_norm).float().cpu(),
        tokens,
    )


def importance_rewiring(
    teacher, blocks, n_blocks: int = 8, seed: int = 0, batch_size: int = 8, keep_head_order=()
) -> Rewiring:
    """The rewiring of `teacher` from `n_blocks` blocks of `blocks` (a TokenBlocks: len() and
    .batch(idx)), drawn without replacement with a generator seeded by `seed`.

    `keep_head_order`: teacher layers (negative: from the end) whose heads stay in the teacher's
    order. Give the layer the distillation loss reads: the relation loss splits that layer's
    concatenated Q/K/V into relation heads by position, and the attention-map loss matches
    heads by index, so a student that keeps it (full depth) compares like with like only when
    its heads are in the teacher's order (docs/guides/supernet-distillation.md, "Rewiring")."""
    n = len(blocks)
    if n == 0 or n_blocks <= 0:
        raise ValueError(f"importance needs blocks: got {n} blocks and n_blocks={n_blocks}")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_blocks]
    batches = (blocks.batch(idx[s : s + batch_size]) for s in range(0, len(idx), batch_size))
    imp = measure_importance(teacher, batches)
    rw = Rewiring.from_importance(imp, f"importance on {len(idx)} blocks ({imp.tokens} tokens), seed {seed}")
    return rw.keep_heads(keep_head_order)


# --- applying -------------------------------------------------------------------------------
def _head_rows(perm: torch.Tensor, d: int) -> torch.Tensor:
    """Row indices of a (A*d, ...) head-blocked matrix for a head permutation."""
    return (perm[:, None] * d + torch.arange(d)[None, :]).reshape(-1)


def rewire_state_dict(state: dict, rw: Rewiring) -> dict:
    """The teacher's BertModel-body state dict (names without "bert."; embeddings.*, ELECTRA's
    projection embeddings.project.*, encoder.layer.*, pooler.*) permuted by `rw`. Function-preserving:
    the result computes the same hidden states and pooler output, features reordered by rw.hidden
    (with a projection, the embeddings keep their order and its rows are permuted). Integer buffers
    (position_ids) pass unchanged; any other tensor it does not know is refused."""
    if "embeddings.word_embeddings.weight" not in state:
        raise ValueError(
            "rewire_state_dict needs a BertModel state dict (no 'embeddings.word_embeddings.weight'; "
            "strip a 'bert.' prefix first)"
        )
    # with a projection (ELECTRA) the residual stream starts at its output: the embeddings keep their order
    projected = "embeddings.project.weight" in state
    H = (
        state["embeddings.project.weight"].shape[0]
        if projected
        else state["embeddings.word_embeddings.weight"].shape[1]
    )
    hp = _check_perm(rw.hidden, H, "hidden")
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))})
    if layers != list(range(rw.layers)):
        raise ValueError(f"rewiring is for {rw.layers} teacher layers, the state dict has layers {layers}")
    rows = {}
    for l in layers:
        q = state[f"encoder.layer.{l}.attention.self.query.weight"]
        A = rw.heads[l].numel()
        if q.shape[0] % A:
            raise ValueError(
                f"layer {l}: Q/K/V width {q.shape[0]} is not a multiple of the rewiring's {A} heads"
            )
        ap = _check_perm(rw.heads[l], A, f"heads[{l}]")
        F = state[f"encoder.layer.{l}.intermediate.dense.weight"].shape[0]
        rows[l] = (_head_rows(ap, q.shape[0] // A), _check_perm(rw.ffn[l], F, f"ffn[{l}]"))

    out = {}
    for k, t in state.items():
        if not torch.is_floating_point(t):
            out[k] = t
            continue
        on = lambda p: p.to(t.device)
        if k in _EMB_MATRICES or k.startswith("embeddings.LayerNorm."):
            out[k] = t if projected else t[..., on(hp)]
        elif k in ("embeddings.project.weight", "embeddings.project.bias"):
            out[k] = t[on(hp)]
        elif k == "pooler.dense.weight":
            out[k] = t[on(hp)][:, on(hp)]
        elif k == "pooler.dense.bias":
            out[k] = t[on(hp)]
        elif m := _LAYER_KEY.match(k):
            l, rest = int(m.group(1)), m.group(2)
            head_rows, fp = (on(p) for p in rows[l])
            if rest in (
                "attention.self.query.weight",
                "attention.self.key.weight",
                "attention.self.value.weight",
            ):
                out[k] = t[head_rows][:, on(hp)]
            elif rest in (
                "attention.self.query.bias",
                "attention.self.key.bias",
                "attention.self.value.bias",
            ):
                out[k] = t[head_rows]
            elif rest == "attention.output.dense.weight":
                out[k] = t[on(hp)][:, head_rows]
            elif rest == "intermediate.dense.weight":
                out[k] = t[fp][:, on(hp)]
            elif rest == "intermediate.dense.bias":
                out[k] = t[fp]
            elif rest == "output.dense.weight":
                out[k] = t[on(hp)][:, fp]
            elif rest in (
                "attention.output.dense.bias",
                "output.dense.bias",
                "attention.output.LayerNorm.weight",
                "attention.output.LayerNorm.bias",
                "output.LayerNorm.weight",
                "output.LayerNorm.bias",
            ):
                out[k] = t[on(hp)]
            else:
                raise ValueError(
                    f"rewire_state_dict: unknown teacher tensor '{k}' (BertModel layer tensors only)"
                )
        else:
            raise ValueError(
                f"rewire_state_dict: unknown teacher tensor '{k}': only BertModel's embeddings.*, "
                f"encoder.layer.* and pooler.* can be permuted"
            )
    return out


def rewired_teacher_state(teacher_state: dict, rw: Rewiring) -> dict:
    """A HF BertModel (or task model) state dict -> its body ("bert." prefix stripped, heads
    dropped) permuted by `rw`, ready for SuperBert.load_from_teacher."""
    sd = {k[5:] if k.startswith("bert.") else k: v for k, v in teacher_state.items()}
    return rewire_state_dict({k: v for k, v in sd.items() if is_body_key(k)}, rw)


def is_body_key(k: str) -> bool:
    """A BertModel body tensor name (what a supernet is initialised from)."""
    return k.startswith(("embeddings.", "encoder.layer.", "pooler."))


def broadcast_rewiring(rw: Rewiring, device: torch.device, src: int = 0) -> Rewiring:
    """Every rank gets rank `src`'s orderings (shapes agree: they come from the same teacher),
    so a near-tie measured differently on two ranks cannot give them different inits."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rw
    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def bc(p):
        t = p.to(dev).contiguous()
        dist.broadcast(t, src)
        return t.cpu()

    return Rewiring(bc(rw.hidden), [bc(p) for p in rw.heads], [bc(p) for p in rw.ffn], rw.note)


__all__ = [
    "Importance",
    "Rewiring",
    "broadcast_rewiring",
    "importance_rewiring",
    "is_body_key",
    "measure_importance",
    "rewire_state_dict",
]
