"""Flash-style attention in Triton for any head count A and head dim d <= 128 (32, 64, 128 and
odd sizes: BLOCK_D is a constexpr power of two and other d are masked inside the kernel, never
padded in memory), with a key padding mask. q, k, v: (B, A, T, d), read by their strides (the
model's head-split views are not copied). Forward keeps the row log-sum-exp; backward recomputes
P in two deterministic passes (dK/dV per key block, dQ per query block; no atomics).
Attention probabilities (for attention-map distillation, without gradient) come from
`attention_probs`, one pass over Q K^T with the saved LSE, without recomputing the projections.

Limits (checked at the boundary by `check_limits`): T <= MAX_T, d <= MAX_D, B*A < 2^31.
(B*A) sits on grid axis 0 (up to 2^31-1 programs); query/key blocks on axes 1/2 (at most
65,535 each, which MAX_T keeps). Offsets that scale with B*A*T*d or B*A*T*T are 64-bit.
A query row whose keys are all masked (an all-padding sequence) gives 0 output, LSE 0 and zero
gradients."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, check_device

MAX_T = 65536  # documented maximum sequence length (>= 16 rows per block keeps axes 1/2 <= 4096 blocks)
MAX_D = 128  # largest head dim (register budget of the (BM, BLOCK_D) accumulators)
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535

# Block sizes per kernel: kind -> (BM, BN, num_warps, num_stages). BLOCK_OVERRIDE (same keys)
# lets a benchmark try others without editing this file.
BLOCK_OVERRIDE: dict = {}


def blocks(kind: str, T: int, BD: int, dtype) -> tuple:
    """(BM, BN, num_warps, num_stages) for kind in fwd | bwd_dkdv | bwd_dq | probs."""
    if kind in BLOCK_OVERRIDE:
        return BLOCK_OVERRIDE[kind]
    if INTERPRET:
        return 16, 16, 1, 1
    if dtype == torch.float32:  # fp32 tiles: twice the registers and shared memory
        return (64, 32, 4, 2) if BD >= 128 else (64, 64, 4, 2)
    small = T <= 64
    if kind == "fwd":
        if small:
            return (32, 32, 4, 2) if T <= 32 else (64, 64, 4, 2)
        return (128, 64, 4 if BD <= 64 else 8, 3)  # one program per (128 queries, b*h) at T=128
    if kind == "probs":
        return 64, 64, 4, 2
    if small:
        return (32, 32, 4, 2) if T <= 32 else (64, 64, 4, 2)
    return (64, 64, 4 if BD <= 64 else 8, 2)


def check_limits(B: int, A: int, T: int, D: int) -> None:
    """Raise a ValueError naming the limit when a shape is outside what the kernels handle."""
    if T > MAX_T:
        raise ValueError(f"triton attention: sequence length T={T} exceeds the maximum T={MAX_T}")
    if D > MAX_D:
        raise ValueError(
            f"triton attention: head dim {D} > {MAX_D} is not supported (1..{MAX_D}: 32, 64, 128, ...)"
        )
    if B * A > MAX_GRID_X:
        raise ValueError(
            f"triton attention: batch*heads = {B}*{A} = {B * A} exceeds the grid limit {MAX_GRID_X}"
        )


def grid(B: int, A: int, T: int, BM: int, BN: int | None = None) -> tuple:
    """(B*A on axis 0, query blocks on axis 1[, key blocks on axis 2]); axes 1/2 capped at 65,535."""
    g = (B * A, triton.cdiv(T, BM)) + ((triton.cdiv(T, BN),) if BN is not None else ())
    if g[0] > MAX_GRID_X or any(n > MAX_GRID_YZ for n in g[1:]):
        raise ValueError(
            f"triton attention: grid {g} is past the limits (axis 0 <= {MAX_GRID_X}, "
            f"axes 1/2 <= {MAX_GRID_YZ})"
        )
    return g


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # fp32 inputs stay fp32 (no TF32 on GPUs)
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _key_valid(mask_ptr, b, s_mb, rn, T, HAS_MASK: tl.constexpr):
    valid = rn < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + b * s_mb + rn, mask=rn < T, other=0) != 0)
    return valid


@triton.jit
def _attn_fwd(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    o_ptr,
    lse_ptr,
    A,
    T,
    D,
    scale,
    sq_b,
    sq_a,
    sq_t,
    sk_b,
    sk_a,
    sk_t,
    sv_b,
    sv_a,
    sv_t,
    s_mb,
    HAS_MASK: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)  # bh * T * D can pass 2^31
    pid_m = tl.program_id(1)
    b, a = bh // A, bh % A
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    rn0 = tl.arange(0, BN)
    dm = rd < D
    q = tl.load(
        q_ptr + b * sq_b + a * sq_a + rm.to(tl.int64)[:, None] * sq_t + rd[None, :],
        mask=(rm[:, None] < T) & dm[None, :],
        other=0.0,
    )
    k_ptrs = k_ptr + b * sk_b + a * sk_a + rn0.to(tl.int64)[:, None] * sk_t + rd[None, :]
    v_ptrs = v_ptr + b * sv_b + a * sv_a + rn0.to(tl.int64)[:, None] * sv_t + rd[None, :]
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, BD), tl.float32)
    for n0 in range(0, T, BN):
        rn = n0 + rn0
        kv_m = (rn[:, None] < T) & dm[None, :]
        k = tl.load(k_ptrs, mask=kv_m, other=0.0)
        v = tl.load(v_ptrs, mask=kv_m, other=0.0)
        s = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale  # (BM, BN)
        valid = _key_valid(mask_ptr, b, s_mb, rn, T, HAS_MASK)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: p = 0, not NaN
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE).to(tl.float32)
        m_i = m_new
        k_ptrs += BN * sk_t
        v_ptrs += BN * sv_t
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # fully masked row: output 0, LSE 0
    out = acc / l_safe[:, None]
    tl.store(
        o_ptr + bh * T * D + rm[:, None] * D + rd[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=(rm[:, None] < T) & dm[None, :],
    )
    tl.store(lse_ptr + bh * T + rm, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_safe), mask=rm < T)


@triton.jit
def _attn_bwd_delta(
    o_ptr, do_ptr, delta_ptr, A, T, D, sdo_b, sdo_a, sdo_t, BM: tl.constexpr, BD: tl.constexpr
):
    """delta[bh, t] = sum_d dO * O (fp32), do read by its strides."""
    bh = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    mk = (rm[:, None] < T) & (rd[None, :] < D)
    b, a = bh // A, bh % A
    o = tl.load(o_ptr + bh * T * D + rm[:, None] * D + rd[None, :], mask=mk, other=0.0).to(tl.float32)
    do = tl.load(
        do_ptr + b * sdo_b + a * sdo_a + rm.to(tl.int64)[:, None] * sdo_t + rd[None, :], mask=mk, other=0.0
    ).to(tl.float32)
    tl.store(delta_ptr + bh * T + rm, tl.sum(o * do, axis=1), mask=rm < T)


@triton.jit
def _attn_bwd_dkdv(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    A,
    T,
    D,
    scale,
    sq_b,
    sq_a,
    sq_t,
    sk_b,
    sk_a,
    sk_t,
    sv_b,
    sv_a,
    sv_t,
    s_mb,
    sdo_b,
    sdo_a,
    sdo_t,
    HAS_MASK: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    b, a = bh // A, bh % A
    rn = pid_n * BN + tl.arange(0, BN)
    rd = tl.arange(0, BD)
    rm0 = tl.arange(0, BM)
    dm = rd < D
    kv_m = (rn[:, None] < T) & dm[None, :]
    k = tl.load(
        k_ptr + b * sk_b + a * sk_a + rn.to(tl.int64)[:, None] * sk_t + rd[None, :], mask=kv_m, other=0.0
    )
    v = tl.load(
        v_ptr + b * sv_b + a * sv_a + rn.to(tl.int64)[:, None] * sv_t + rd[None, :], mask=kv_m, other=0.0
    )
    valid = _key_valid(mask_ptr, b, s_mb, rn, T, HAS_MASK)
    q_ptrs = q_ptr + b * sq_b + a * sq_a + rm0.to(tl.int64)[:, None] * sq_t + rd[None, :]
    do_ptrs = do_ptr + b * sdo_b + a * sdo_a + rm0.to(tl.int64)[:, None] * sdo_t + rd[None, :]
    dk = tl.zeros((BN, BD), tl.float32)
    dv = tl.zeros((BN, BD), tl.float32)
    for m0 in range(0, T, BM):
        rm = m0 + rm0
        q_m = (rm[:, None] < T) & dm[None, :]
        q = tl.load(q_ptrs, mask=q_m, other=0.0)
        do = tl.load(do_ptrs, mask=q_m, other=0.0)
        lse = tl.load(lse_ptr + bh * T + rm, mask=rm < T, other=0.0)
        delta = tl.load(delta_ptr + bh * T + rm, mask=rm < T, other=0.0)
        s = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale  # (BM, BN)
        p = tl.exp(s - lse[:, None])
        p = tl.where(valid[None, :] & (rm[:, None] < T), p, 0.0)
        dv += _dot(tl.trans(p).to(do.dtype), do, IEEE).to(tl.float32)
        dp = _dot(do, tl.trans(v), IEEE).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds).to(q.dtype), q, IEEE).to(tl.float32)
        q_ptrs += BM * sq_t
        do_ptrs += BM * sdo_t
    off = bh * T * D + rn[:, None] * D + rd[None, :]
    tl.store(dk_ptr + off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_m)
    tl.store(dv_ptr + off, dv.to(dv_ptr.dtype.element_ty), mask=kv_m)


@triton.jit
def _attn_bwd_dq(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    A,
    T,
    D,
    scale,
    sq_b,
    sq_a,
    sq_t,
    sk_b,
    sk_a,
    sk_t,
    sv_b,
    sv_a,
    sv_t,
    s_mb,
    sdo_b,
    sdo_a,
    sdo_t,
    HAS_MASK: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    b, a = bh // A, bh % A
    rm = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    rn0 = tl.arange(0, BN)
    dm = rd < D
    q_m = (rm[:, None] < T) & dm[None, :]
    q = tl.load(
        q_ptr + b * sq_b + a * sq_a + rm.to(tl.int64)[:, None] * sq_t + rd[None, :], mask=q_m, other=0.0
    )
    do = tl.load(
        do_ptr + b * sdo_b + a * sdo_a + rm.to(tl.int64)[:, None] * sdo_t + rd[None, :], mask=q_m, other=0.0
    )
    lse = tl.load(lse_ptr + bh * T + rm, mask=rm < T, other=0.0)
    delta = tl.load(delta_ptr + bh * T + rm, mask=rm < T, other=0.0)
    k_ptrs = k_ptr + b * sk_b + a * sk_a + rn0.to(tl.int64)[:, None] * sk_t + rd[None, :]
    v_ptrs = v_ptr + b * sv_b + a * sv_a + rn0.to(tl.int64)[:, None] * sv_t + rd[None, :]
    dq = tl.zeros((BM, BD), tl.float32)
    for n0 in range(0, T, BN):
        rn = n0 + rn0
        kv_m = (rn[:, None] < T) & dm[None, :]
        k = tl.load(k_ptrs, mask=kv_m, other=0.0)
        v = tl.load(v_ptrs, mask=kv_m, other=0.0)
        valid = _key_valid(mask_ptr, b, s_mb, rn, T, HAS_MASK)
        s = _dot(q, tl.trans(k), IEEE).to(tl.float32) * scale
        p = tl.where(valid[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE).to(tl.float32)
        k_ptrs += BN * sk_t
        v_ptrs += BN * sv_t
    tl.store(
        dq_ptr + bh * T * D + rm[:, None] * D + rd[None, :],
        (dq * scale).to(dq_ptr.dtype.element_ty),
        mask=q_m,
    )


@triton.jit
def _attn_probs(
    q_ptr,
    k_ptr,
    mask_ptr,
    lse_ptr,
    p_ptr,
    A,
    T,
    D,
    scale,
    sq_b,
    sq_a,
    sq_t,
    sk_b,
    sk_a,
    sk_t,
    s_mb,
    HAS_MASK: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)  # bh * T * T passes 2^31 long before anything else
    pid_m, pid_n = tl.program_id(1), tl.program_id(2)
    b, a = bh // A, bh % A
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rd = tl.arange(0, BD)
    dm = rd < D
    q = tl.load(
        q_ptr + b * sq_b + a * sq_a + rm.to(tl.int64)[:, None] * sq_t + rd[None, :],
        mask=(rm[:, None] < T) & dm[None, :],
        other=0.0,
    )
    k = tl.load(
        k_ptr + b * sk_b + a * sk_a + rn.to(tl.int64)[:, None] * sk_t + rd[None, :],
        mask=(rn[:, None] < T) & dm[None, :],
        other=0.0,
    )
    lse = tl.load(lse_ptr + bh * T + rm, mask=rm < T, other=0.0)
    valid = _key_valid(mask_ptr, b, s_mb, rn, T, HAS_MASK)
    p = tl.where(
        valid[None, :], tl.exp(_dot(q, tl.trans(k), IEEE).to(tl.float32) * scale - lse[:, None]), 0.0
    )
    tl.store(
        p_ptr + bh * T * T + rm.to(tl.int64)[:, None] * T + rn[None, :],
        p.to(p_ptr.dtype.element_ty),
        mask=(rm[:, None] < T) & (rn[None, :] < T),
    )


def _common_args(q, k, v, key_mask):
    check_device(q, k, v, key_mask)
    B, A, T, D = q.shape
    check_limits(B, A, T, D)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"triton attention: {name} must have unit stride on its last (head) dim")
        if t.dtype != q.dtype:
            raise ValueError(f"triton attention: {name} dtype {t.dtype} != q dtype {q.dtype}")
    BD = max(16, triton.next_power_of_2(D))
    m = key_mask.to(torch.int32).contiguous() if key_mask is not None else q
    strides = (
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        m.stride(0) if key_mask is not None else 0,
    )
    return B, A, T, D, BD, m, strides


class FlashAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask):
        B, A, T, D, BD, m, st = _common_args(q, k, v, key_mask)
        scale = 1.0 / math.sqrt(D)
        o = torch.empty((B, A, T, D), device=q.device, dtype=q.dtype)
        lse = torch.empty((B, A, T), device=q.device, dtype=torch.float32)
        BM, BN, w, s = blocks("fwd", T, BD, q.dtype)
        _attn_fwd[grid(B, A, T, BM)](
            q,
            k,
            v,
            m,
            o,
            lse,
            A,
            T,
            D,
            scale,
            *st,
            HAS_MASK=key_mask is not None,
            IEEE=q.dtype == torch.float32,
            BM=BM,
            BN=BN,
            BD=BD,
            num_warps=w,
            num_stages=s,
        )
        ctx.save_for_backward(q, k, v, m, o, lse)
        ctx.has_mask, ctx.scale, ctx.st, ctx.BD = key_mask is not None, scale, st, BD
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, m, o, lse = ctx.saved_tensors
        B, A, T, D = q.shape
        BD, st, ieee = ctx.BD, ctx.st, q.dtype == torch.float32
        if do.stride(-1) != 1:
            do = do.contiguous()
        sdo = (do.stride(0), do.stride(1), do.stride(2))
        delta = torch.empty((B, A, T), device=q.device, dtype=torch.float32)
        dbm = 16 if INTERPRET else 64
        _attn_bwd_delta[grid(B, A, T, dbm)](o, do, delta, A, T, D, *sdo, BM=dbm, BD=BD)
        dq, dk, dv = (torch.empty((B, A, T, D), device=q.device, dtype=q.dtype) for _ in range(3))
        BM, BN, w, s = blocks("bwd_dkdv", T, BD, q.dtype)
        _attn_bwd_dkdv[grid(B, A, T, BN)](
            q,
            k,
            v,
            m,
            do,
            lse,
            delta,
            dk,
            dv,
            A,
            T,
            D,
            ctx.scale,
            *st,
            *sdo,
            HAS_MASK=ctx.has_mask,
            IEEE=ieee,
            BM=BM,
            BN=BN,
            BD=BD,
            num_warps=w,
            num_stages=s,
        )
        BM, BN, w, s = blocks("bwd_dq", T, BD, q.dtype)
        _attn_bwd_dq[grid(B, A, T, BM)](
            q,
            k,
            v,
            m,
            do,
            lse,
            delta,
            dq,
            A,
            T,
            D,
            ctx.scale,
            *st,
            *sdo,
            HAS_MASK=ctx.has_mask,
            IEEE=ieee,
            BM=BM,
            BN=BN,
            BD=BD,
            num_warps=w,
            num_stages=s,
        )
        return dq, dk, dv, None


def attention_probs(q, k, key_mask, lse):
    """softmax(Q K^T / sqrt(d)) from the saved LSE: (B, A, T, T), no gradient."""
    B, A, T, D, BD, m, st = _common_args(q, k, k, key_mask)
    p = torch.empty((B, A, T, T), device=q.device, dtype=q.dtype)
    BM, BN, w, s = blocks("probs", T, BD, q.dtype)
    _attn_probs[grid(B, A, T, BM, BN)](
        q,
        k,
        m,
        lse,
        p,
        A,
        T,
        D,
        1.0 / math.sqrt(D),
        *st[:6],
        st[9],
        HAS_MASK=key_mask is not None,
        IEEE=q.dtype == torch.float32,
        BM=BM,
        BN=BN,
        BD=BD,
        num_warps=w,
        num_stages=s,
    )
    return p


def attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """(context (B, A, T, d), probs (B, A, T, T) without gradient, or None). The kernel path only:
    the dispatch (autodistil.ops.dispatch.sliced_attention) sends attention dropout and
    probabilities that carry gradient to the torch reference before calling this."""
    if dropout_p > 0:
        raise ValueError(
            f"triton attention: dropout_p={dropout_p} is not supported by the kernels "
            f"(only 0.0; ops.sliced_attention routes dropout to the torch path)"
        )
    if q.is_cuda and torch.is_autocast_enabled("cuda"):  # as SDPA: fp32 q/k/v run in the autocast dtype
        dt = torch.get_autocast_dtype("cuda")
        q, k, v = (t.to(dt) if t.dtype == torch.float32 else t for t in (q, k, v))
    o, lse = FlashAttentionTriton.apply(q, k, v, key_mask)
    probs = attention_probs(q.detach(), k.detach(), key_mask, lse.detach()) if need_probs else None
    return o, probs
