"""Multi-objective distillation losses (task-agnostic and task-specific).

All losses are >= 0 and exactly 0 for identical teacher and student inputs.
Masks are (B, T) with 1 for real tokens; padded keys and padded query rows are ignored.
Every loss is computed in fp32 with autocast disabled locally (under autocast a `.float()`
input still gives a bf16 matmul), whatever dtype the model's outputs have.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _fp32(t: torch.Tensor):
    """A context with autocast off on t's device: everything inside computes in the inputs' dtype."""
    return (
        torch.autocast(t.device.type, enabled=False)
        if t.device.type in ("cpu", "cuda")
        else contextlib.nullcontext()
    )


def _kl_rows(t_logp: torch.Tensor, s_logp: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over valid query rows of KL(p_t || p_s) along the last dim.
    t_logp, s_logp: (B, R, T, T) log-probabilities; key_mask: (B, T)."""
    kl = t_logp.exp() * (t_logp - s_logp)  # (B, R, T, T)
    if key_mask is None:
        return kl.sum(-1).mean()
    m = key_mask.to(kl.dtype)
    kl = kl.masked_fill(m[:, None, None, :] == 0, 0.0).sum(-1)  # (B, R, T)
    rows = m[:, None, :].expand_as(kl)
    return (kl * rows).sum() / rows.sum().clamp_min(1.0)


def _masked_logits(x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    if key_mask is None:
        return x
    return x.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)


def relation_log_probs(
    x: torch.Tensor, n_heads: int, key_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """x: (B, T, W) -> log softmax(X_r X_r^T / sqrt(d_r)) per relation head, (B, r, T, T), d_r = W / r."""
    B, T, W = x.shape
    if W % n_heads:
        raise ValueError(
            f"relation heads r={n_heads} must divide the Q/K/V width {W} "
            f"(r=16 divides 64*A and 32*A for every head count A)"
        )
    d = W // n_heads
    with _fp32(x):
        xr = x.float().reshape(B, T, n_heads, d).transpose(1, 2)  # (B, r, T, d_r) fp32
        scores = xr @ xr.transpose(-1, -2) / math.sqrt(d)  # (B, r, T, T) fp32
        return F.log_softmax(_masked_logits(scores, key_mask), dim=-1)


def relation_loss(t_x: torch.Tensor, s_x: torch.Tensor, key_mask=None, n_heads: int = 16) -> torch.Tensor:
    """MiniLMv2 self-attention relation transfer for one of Q, K, V:
        L = mean_{b, r, valid i} KL( softmax(T_r T_r^T / sqrt(d_t)) || softmax(S_r S_r^T / sqrt(d_s)) )_i
    t_x: (B, T, W_t), s_x: (B, T, W_s); W_t and W_s may differ (relations are T x T)."""
    if t_x.shape[:2] != s_x.shape[:2]:
        raise ValueError(
            f"relation_loss: teacher {tuple(t_x.shape)} and student {tuple(s_x.shape)} differ in (B, T)"
        )
    with _fp32(s_x):
        return _kl_rows(
            relation_log_probs(t_x, n_heads, key_mask), relation_log_probs(s_x, n_heads, key_mask), key_mask
        )


def qkv_relation_loss(
    t_qkv: Sequence[torch.Tensor], s_qkv: Sequence[torch.Tensor], key_mask=None, n_heads: int = 16
) -> torch.Tensor:
    """Mean of the Q-Q, K-K and V-V relation losses (MiniLMv2)."""
    return sum(relation_loss(t, s, key_mask, n_heads) for t, s in zip(t_qkv, s_qkv)) / 3.0


def attention_map_loss(t_probs: torch.Tensor, s_probs: torch.Tensor, key_mask=None) -> torch.Tensor:
    """KL between attention probabilities, (B, A_t, T, T) vs (B, A_s, T, T): head-matched when
    A_t == A_s, otherwise both are averaged over heads first."""
    if t_probs.shape[1] != s_probs.shape[1]:
        t_probs, s_probs = t_probs.mean(1, keepdim=True), s_probs.mean(1, keepdim=True)
    eps = 1e-12
    with _fp32(s_probs):
        return _kl_rows(t_probs.float().clamp_min(eps).log(), s_probs.float().clamp_min(eps).log(), key_mask)


def hidden_state_loss(
    t_hs: Sequence[torch.Tensor],
    s_hs: Sequence[torch.Tensor],
    layer_map: Sequence[tuple],
    proj: Optional[nn.Module] = None,
    key_mask=None,
) -> torch.Tensor:
    """Mean over mapped (teacher layer, student layer) pairs of MSE(T_l, proj(S_l)), valid tokens only.
    proj maps student width to teacher width (a learned linear when widths differ)."""
    total = 0.0
    for tl, sl in layer_map:
        t, s = t_hs[tl], s_hs[sl]
        if proj is not None:
            s = proj(s)  # the projection runs under the caller's autocast; the error below in fp32
        if t.shape != s.shape:
            raise ValueError(
                f"hidden_state_loss: teacher layer {tl} {tuple(t.shape)} vs student layer {sl} "
                f"{tuple(s.shape)}: widths differ, give a projection"
            )
        with _fp32(s):
            se = (t.float() - s.float()).pow(2).mean(-1)  # (B, T) fp32
        if key_mask is not None:
            m = key_mask.to(se.dtype)
            total = total + (se * m).sum() / m.sum().clamp_min(1.0)
        else:
            total = total + se.mean()
    return total / max(1, len(layer_map))


def uniform_layer_map(t_layers: int, s_layers: int) -> list[tuple]:
    """Student layer j (1-based over hidden_states, 0 = embeddings) <- teacher layer round(j * Lt / Ls)."""
    return [(round(j * t_layers / s_layers), j) for j in range(1, s_layers + 1)]


def logits_loss(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft-label distillation: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean. (B, C) each.
    For regression (C == 1): MSE."""
    if t_logits.shape != s_logits.shape:
        raise ValueError(f"logits_loss: shapes differ {tuple(t_logits.shape)} vs {tuple(s_logits.shape)}")
    with _fp32(s_logits):
        if t_logits.shape[-1] == 1:
            return F.mse_loss(s_logits.float(), t_logits.float())
        T = temperature
        t = F.log_softmax(t_logits.float() / T, -1)
        s = F.log_softmax(s_logits.float() / T, -1)
        return (t.exp() * (t - s)).sum(-1).mean() * T * T


@dataclass(frozen=True)
class LossWeights:
    """Weighted combination of the objectives (0 disables one)."""

    relation: float = 1.0  # MiniLMv2 self-attention relations (Q-Q, K-K, V-V) of one layer
    attention: float = 0.0  # attention maps (KL) of that layer
    hidden: float = 0.0  # multi-layer hidden states (MSE through a learned projection)
    logits: float = 0.0  # teacher logits (task fine-tuning only; supernet training has none)
    relation_heads: int = 16  # relation heads the Q/K/V are regrouped into (student and teacher alike)
    teacher_layer: int = -1  # layer whose Q/K/V (and attention map) the student matches
    student_layer: int = -1  # the student's layer that matches it
    temperature: float = 1.0  # softmax temperature of the logits term

    def __post_init__(self):
        for f in ("relation", "attention", "hidden", "logits"):
            if getattr(self, f) < 0:
                raise ValueError(f"loss weight {f}={getattr(self, f)} must be >= 0")
        if self.relation + self.attention + self.hidden + self.logits <= 0:
            raise ValueError("at least one loss weight must be positive")


def combined_loss(
    w: LossWeights,
    t_out,
    s_out,
    key_mask=None,
    proj: Optional[nn.Module] = None,
    t_logits=None,
    s_logits=None,
) -> tuple[torch.Tensor, dict]:
    """t_out / s_out carry .qkv, .attentions, .hidden_states (HF-style or SuperBertOutput).
    Returns (loss, {name: detached scalar tensor}): the parts stay on the device, so a training
    step that does not log them never waits for the GPU to read them (float() them to log)."""
    parts = {}
    if w.relation:
        parts["relation"] = qkv_relation_loss(
            t_out.qkv[w.teacher_layer], s_out.qkv[w.student_layer], key_mask, w.relation_heads
        )
    if w.attention:
        parts["attention"] = attention_map_loss(
            t_out.attentions[w.teacher_layer], s_out.attentions[w.student_layer], key_mask
        )
    if w.hidden:
        lm = uniform_layer_map(len(t_out.hidden_states) - 1, len(s_out.hidden_states) - 1)
        parts["hidden"] = hidden_state_loss(t_out.hidden_states, s_out.hidden_states, lm, proj, key_mask)
    if w.logits:
        parts["logits"] = logits_loss(t_logits, s_logits, w.temperature)
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, {k: v.detach() for k, v in parts.items()}
