"""CUDA attention (csrc/attention.cu): a tiled, flash-style kernel on tensor cores for fp16/bf16
(mma.sync m16n8k16, fp32 accumulation), a SIMT path for fp32 (no TF32), any head count, head
dim d <= 128 (32, 64, 128 native; smaller d padded in shared memory, never in global memory),
a key padding mask, and a deterministic backward (no atomics: delta = rowsum(dO * O), a dK/dV
pass over key blocks and a dQ pass over query blocks, same math as kernels/attention.py).

q, k, v: (B, A, T, d) read through their strides (the model's head-split views of (B, T, A*d)
tensors are not copied; stride 1 on d is required). Outputs and gradients are written in the
(B, T, A, d) memory order when the input is such a head-split view, so the model's merge of the
heads back into (B, T, A*d) is a view, not a copy.

Forward saves O and the row log-sum-exp (fp32, in log2 units; +inf for a fully masked row so
every probability recomputed from it is 0). Probabilities (B, A, T, T) for attention-map
distillation come from a separate light pass over Q K^T with the saved LSE; they carry no
gradient. A fully masked query row (an all-padding sequence) gives 0 output, 0 probabilities
and 0 gradients.

The extension ``autodistil._C`` is imported on first use: this module imports without a GPU and
without the extension (``autodistil.ops.cuda_backend`` reports the backend's availability).
"""
from __future__ import annotations


import torch

from .cuda_launch import DTYPE_CODE as _DTYPE, on as _on, ptr as _p, stream as _stream

MAX_SEQ_LEN = 65536        # the one documented maximum T (forward, probabilities and backward)
MAX_HEAD_DIM = 128
IMPLS = {"auto": 0, "simt": 1}  # auto: tensor cores for fp16/bf16, SIMT for fp32; simt: SIMT always


def _ext():
    from .. import _C  # lazily: importing this module never needs the extension or a GPU
    return _C


def _s3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def check_inputs(q, k, v, key_mask=None, impl: str = "auto"):
    """Boundary checks (flash-attention style): each message names the tensor and what is allowed.
    Shapes, dtypes, strides and limits are checked before the device, so they can be tested with
    CPU or meta tensors; nothing here touches the extension."""
    if impl not in IMPLS:
        raise ValueError(f"cuda attention: impl {impl!r} is not allowed: one of {sorted(IMPLS)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"cuda attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"cuda attention: {name} must be 4-D (B, A, T, d), got shape {tuple(t.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"cuda attention: q, k, v must share shape (B, A, T, d); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, A, T, D = q.shape
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _DTYPE:
            raise ValueError(f"cuda attention: {name} has dtype {t.dtype}; allowed float32, float16, bfloat16")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"cuda attention: q, k, v must share one dtype; got q {q.dtype}, k {k.dtype}, "
                         f"v {v.dtype}")
    if min(B, A, T, D) < 1:
        raise ValueError(f"cuda attention: q of shape (B, A, T, d)={tuple(q.shape)} has an empty dim; "
                         f"all of B, A, T, d must be >= 1")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"cuda attention: head dim d={D} is not supported; allowed d <= {MAX_HEAD_DIM} "
                         f"(32, 64, 128 native, smaller d padded inside the kernel)")
    if T > MAX_SEQ_LEN:
        raise ValueError(f"cuda attention: sequence length T={T} exceeds the maximum {MAX_SEQ_LEN} "
                         f"(q of shape (B, A, T, d)={tuple(q.shape)})")
    if B * A > 2**31 - 1:
        raise ValueError(f"cuda attention: B*A={B * A} exceeds 2^31-1 (one block row per head)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"cuda attention: {name} must have stride 1 on its last (head) dim, got strides "
                             f"{tuple(t.stride())}")
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor) or tuple(key_mask.shape) != (B, T):
            shape = tuple(key_mask.shape) if isinstance(key_mask, torch.Tensor) else type(key_mask).__name__
            raise ValueError(f"cuda attention: key_mask must be (B, T)={(B, T)} (1 = attend), got {shape}")
        if key_mask.is_floating_point() or key_mask.is_complex():
            raise ValueError(f"cuda attention: key_mask must be bool or integer (1 = attend), got {key_mask.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v), ("key_mask", key_mask)):
        if t is not None and not t.is_cuda:
            raise ValueError(f"cuda attention: {name} is on {t.device}; it must be a CUDA tensor")
        if t is not None and t.device != q.device:
            raise ValueError(f"cuda attention: {name} is on {t.device}, q on {q.device}; all must share a device")


def _heads_like(t):
    """An empty (B, A, T, d) tensor laid out as (B, T, A, d) when t is a head-split view (so the
    model's merge of the heads is a view), contiguous otherwise."""
    B, A, T, D = t.shape
    if t.is_contiguous():
        return torch.empty((B, A, T, D), device=t.device, dtype=t.dtype)
    return torch.empty((B, T, A, D), device=t.device, dtype=t.dtype).transpose(1, 2)


def _mask_args(m):
    return (_p(m), m.stride(0)) if m is not None else (0, 0)


def _probs(q, k, m, lse):
    B, A, T, D = q.shape
    probs = torch.empty((B, A, T, T), device=q.device, dtype=q.dtype)
    _ext().attention_probs(_DTYPE[q.dtype], _p(q), _p(k), *_mask_args(m), _p(lse), _p(probs), B, A, T, D,
                           *_s3(q), *_s3(k), _stream(q.device))
    return probs


class AttentionCUDA(torch.autograd.Function):
    """(o, probs or None) = attention(q, k, v, key_mask); probs carry no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, need_probs: bool, impl: str = "auto"):
        check_inputs(q, k, v, key_mask, impl)
        B, A, T, D = q.shape
        m = key_mask.to(device=q.device, dtype=torch.int32).contiguous() if key_mask is not None else None
        o = _heads_like(q)                                                      # (B, A, T, d)
        lse = torch.empty((B, A, T), device=q.device, dtype=torch.float32)      # log2 units
        with _on(q.device):
            _ext().attention_forward(_DTYPE[q.dtype], IMPLS[impl], _p(q), _p(k), _p(v), *_mask_args(m), _p(o),
                                     _p(lse), B, A, T, D, *_s3(q), *_s3(k), *_s3(v), *_s3(o),
                                     _stream(q.device))
            probs = _probs(q, k, m, lse) if need_probs else None
        ctx.save_for_backward(q, k, v, m, o, lse)
        ctx.impl = impl
        if probs is not None:
            ctx.mark_non_differentiable(probs)
        return o, probs

    @staticmethod
    def backward(ctx, do, dprobs):
        q, k, v, m, o, lse = ctx.saved_tensors
        B, A, T, D = q.shape
        if do is None:
            do = torch.zeros_like(o)
        do = do.to(q.dtype)
        if do.stride(-1) != 1:
            do = do.contiguous()
        delta = torch.empty((B, A, T), device=q.device, dtype=torch.float32)
        dq, dk, dv = _heads_like(q), _heads_like(k), _heads_like(v)
        with _on(q.device):
            _ext().attention_backward(_DTYPE[q.dtype], IMPLS[ctx.impl], _p(q), _p(k), _p(v), *_mask_args(m), _p(o),
                                      _p(do), _p(lse), _p(delta), _p(dq), _p(dk), _p(dv), B, A, T, D,
                                      *_s3(q), *_s3(k), *_s3(v), *_s3(o), *_s3(do), *_s3(dq), *_s3(dk), *_s3(dv),
                                      _stream(q.device))
        return dq, dk, dv, None, None, None


def attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0, impl: str = "auto"):
    """(context (B, A, T, d), probs (B, A, T, T) or None). Attention dropout and probabilities
    that need a gradient are not this kernel's: `ops.sliced_attention` routes them to the torch
    reference before a backend is called. Under CUDA autocast, fp32 q/k/v are cast to the
    autocast dtype (as SDPA is)."""
    if dropout_p > 0:
        raise ValueError(f"cuda attention: dropout_p={dropout_p} is not supported by the kernel; "
                         "call ops.sliced_attention, which routes dropout to the torch reference")
    if torch.is_autocast_enabled("cuda") and q.is_cuda:
        dt = torch.get_autocast_dtype("cuda")
        q, k, v = (t.to(dt) if t.dtype == torch.float32 else t for t in (q, k, v))
    return AttentionCUDA.apply(q, k, v, key_mask, need_probs, impl)


def max_seq_len() -> int:
    """The documented maximum T (the extension checks the same value at its boundary)."""
    return MAX_SEQ_LEN
