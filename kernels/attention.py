"""Flash-style attention in Triton for any head count A and head dim d in {32, 64, 128}
(BLOCK_D is a constexpr power of two; other d are masked inside the kernel, never padded in
memory), with a key padding mask. q, k, v: (B, A, T, d), read by their strides (the model's
head-split views are not copied). Forward keeps the row log-sum-exp; backward recomputes P.
Attention probabilities (for attention-map distillation) come from `attention_probs`, one pass
over Q K^T with the saved LSE, without recomputing the projections."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from autodistil.ops.shared import reference_attention

from ._common import INTERPRET, check_device


def _blocks(T):
    if INTERPRET:
        return 16, 16
    return (64, 64) if T >= 64 else (32, 32)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # fp32 inputs stay fp32 (no TF32 on GPUs)
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _load_tile(ptr, rows, cols, s_row, T, D):
    return tl.load(ptr + rows[:, None] * s_row + cols[None, :], mask=(rows[:, None] < T) & (cols[None, :] < D),
                   other=0.0)


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr, A, T, D, scale,
              sq_b, sq_a, sq_t, sk_b, sk_a, sk_t, sv_b, sv_a, sv_t, s_mb,
              HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, a = bh // A, bh % A
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    q = _load_tile(q_ptr + b * sq_b + a * sq_a, rm, rd, sq_t, T, D)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, BD), tl.float32)
    for n0 in range(0, T, BN):
        rn = n0 + tl.arange(0, BN)
        k = _load_tile(k_ptr + b * sk_b + a * sk_a, rn, rd, sk_t, T, D)
        v = _load_tile(v_ptr + b * sv_b + a * sv_a, rn, rd, sv_t, T, D)
        s = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale                      # (BM, BN)
        valid = rn < T
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * s_mb + rn, mask=rn < T, other=0) != 0)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE).to(tl.float32)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(o_ptr + bh * T * D + rm[:, None] * D + rd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(rm[:, None] < T) & (rd[None, :] < D))
    tl.store(lse_ptr + bh * T + rm, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_safe), mask=rm < T)


@triton.jit
def _attn_bwd_dkdv(q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, A, T, D, scale,
                   sq_b, sq_a, sq_t, sk_b, sk_a, sk_t, sv_b, sv_a, sv_t, s_mb,
                   HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, a = bh // A, bh % A
    rn = pid_n * BN + tl.arange(0, BN)
    rd = tl.arange(0, BD)
    k = _load_tile(k_ptr + b * sk_b + a * sk_a, rn, rd, sk_t, T, D)
    v = _load_tile(v_ptr + b * sv_b + a * sv_a, rn, rd, sv_t, T, D)
    valid = rn < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + b * s_mb + rn, mask=rn < T, other=0) != 0)
    dk = tl.zeros((BN, BD), tl.float32)
    dv = tl.zeros((BN, BD), tl.float32)
    for m0 in range(0, T, BM):
        rm = m0 + tl.arange(0, BM)
        q = _load_tile(q_ptr + b * sq_b + a * sq_a, rm, rd, sq_t, T, D)
        do = _load_tile(do_ptr + bh * T * D, rm, rd, D, T, D)
        lse = tl.load(lse_ptr + bh * T + rm, mask=rm < T, other=0.0)
        delta = tl.load(delta_ptr + bh * T + rm, mask=rm < T, other=0.0)
        s = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale                      # (BM, BN)
        p = tl.exp(s - lse[:, None])
        p = tl.where(valid[None, :] & (rm[:, None] < T), p, 0.0)
        dv += _dot(tl.trans(p).to(do.dtype), do, IEEE).to(tl.float32)
        dp = _dot(do, tl.trans(v), IEEE).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds).to(q.dtype), q, IEEE).to(tl.float32) * scale
    off = bh * T * D + rn[:, None] * D + rd[None, :]
    m2 = (rn[:, None] < T) & (rd[None, :] < D)
    tl.store(dk_ptr + off, dk.to(dk_ptr.dtype.element_ty), mask=m2)
    tl.store(dv_ptr + off, dv.to(dv_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _attn_bwd_dq(q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, A, T, D, scale,
                 sq_b, sq_a, sq_t, sk_b, sk_a, sk_t, sv_b, sv_a, sv_t, s_mb,
                 HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, a = bh // A, bh % A
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    q = _load_tile(q_ptr + b * sq_b + a * sq_a, rm, rd, sq_t, T, D)
    do = _load_tile(do_ptr + bh * T * D, rm, rd, D, T, D)
    lse = tl.load(lse_ptr + bh * T + rm, mask=rm < T, other=0.0)
    delta = tl.load(delta_ptr + bh * T + rm, mask=rm < T, other=0.0)
    dq = tl.zeros((BM, BD), tl.float32)
    for n0 in range(0, T, BN):
        rn = n0 + tl.arange(0, BN)
        k = _load_tile(k_ptr + b * sk_b + a * sk_a, rn, rd, sk_t, T, D)
        v = _load_tile(v_ptr + b * sv_b + a * sv_a, rn, rd, sv_t, T, D)
        valid = rn < T
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * s_mb + rn, mask=rn < T, other=0) != 0)
        s = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale
        p = tl.where(valid[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE).to(tl.float32) * scale
    tl.store(dq_ptr + bh * T * D + rm[:, None] * D + rd[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=(rm[:, None] < T) & (rd[None, :] < D))


@triton.jit
def _attn_probs(q_ptr, k_ptr, mask_ptr, lse_ptr, p_ptr, A, T, D, scale, sq_b, sq_a, sq_t, sk_b, sk_a, sk_t, s_mb,
                HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    pid_m, pid_n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, a = bh // A, bh % A
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rd = tl.arange(0, BD)
    q = _load_tile(q_ptr + b * sq_b + a * sq_a, rm, rd, sq_t, T, D)
    k = _load_tile(k_ptr + b * sk_b + a * sk_a, rn, rd, sk_t, T, D)
    lse = tl.load(lse_ptr + bh * T + rm, mask=rm < T, other=0.0)
    valid = rn < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + b * s_mb + rn, mask=rn < T, other=0) != 0)
    p = tl.where(valid[None, :], tl.exp(_dot(q, tl.trans(k), IEEE).to(tl.float32) * scale - lse[:, None]), 0.0)
    tl.store(p_ptr + bh * T * T + rm[:, None] * T + rn[None, :], p.to(p_ptr.dtype.element_ty),
             mask=(rm[:, None] < T) & (rn[None, :] < T))


def _common_args(q, k, v, key_mask):
    check_device(q, k, v, key_mask)
    B, A, T, D = q.shape
    if D > 128:
        raise ValueError(f"triton attention: head dim {D} > 128 is not supported (32, 64, 128 and smaller)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"triton attention: {name} must have unit stride on its last (head) dim")
    BD = max(16, triton.next_power_of_2(D))
    m = key_mask.to(torch.int32).contiguous() if key_mask is not None else q
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), m.stride(0) if key_mask is not None else 0)
    return B, A, T, D, BD, m, strides


class FlashAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask):
        B, A, T, D, BD, m, st = _common_args(q, k, v, key_mask)
        scale = 1.0 / math.sqrt(D)
        o = torch.empty((B, A, T, D), device=q.device, dtype=q.dtype)
        lse = torch.empty((B, A, T), device=q.device, dtype=torch.float32)
        BM, BN = _blocks(T)
        _attn_fwd[(triton.cdiv(T, BM), B * A)](q, k, v, m, o, lse, A, T, D, scale, *st,
                                              HAS_MASK=key_mask is not None, IEEE=q.dtype == torch.float32, BM=BM, BN=BN, BD=BD)
        ctx.save_for_backward(q, k, v, m, o, lse)
        ctx.has_mask, ctx.scale = key_mask is not None, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, m, o, lse = ctx.saved_tensors
        B, A, T, D = q.shape
        BD = max(16, triton.next_power_of_2(D))
        st = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), m.stride(0) if ctx.has_mask else 0)
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).contiguous()                  # (B, A, T)
        dq, dk, dv = (torch.empty((B, A, T, D), device=q.device, dtype=q.dtype) for _ in range(3))
        BM, BN = _blocks(T)
        _attn_bwd_dkdv[(triton.cdiv(T, BN), B * A)](q, k, v, m, do, lse, delta, dk, dv, A, T, D, ctx.scale, *st,
                                                    HAS_MASK=ctx.has_mask, IEEE=q.dtype == torch.float32, BM=BM, BN=BN, BD=BD)
        _attn_bwd_dq[(triton.cdiv(T, BM), B * A)](q, k, v, m, do, lse, delta, dq, A, T, D, ctx.scale, *st,
                                                  HAS_MASK=ctx.has_mask, IEEE=q.dtype == torch.float32, BM=BM, BN=BN, BD=BD)
        return dq, dk, dv, None


def attention_probs(q, k, key_mask, lse):
    """softmax(Q K^T / sqrt(d)) from the saved LSE: (B, A, T, T), no gradient."""
    B, A, T, D, BD, m, st = _common_args(q, k, k, key_mask)
    p = torch.empty((B, A, T, T), device=q.device, dtype=q.dtype)
    BM, BN = _blocks(T)
    _attn_probs[(triton.cdiv(T, BM), triton.cdiv(T, BN), B * A)](
        q, k, m, lse, p, A, T, D, 1.0 / math.sqrt(D), *st[:6], st[9], HAS_MASK=key_mask is not None,
        IEEE=q.dtype == torch.float32, BM=BM, BN=BN, BD=BD)
    return p


def attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """(context (B, A, T, d), probs or None). Attention dropout and differentiable probabilities
    (attention-map distillation) take the torch path; everything else runs the Triton kernels."""
    if dropout_p > 0 or (need_probs and torch.is_grad_enabled() and q.requires_grad):
        return reference_attention(q, k, v, key_mask, need_probs, dropout_p)
    o, lse = FlashAttentionTriton.apply(q, k, v, key_mask)
    probs = attention_probs(q.detach(), k.detach(), key_mask, lse.detach()) if need_probs else None
    return o, probs
