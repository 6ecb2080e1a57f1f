"""The "cuda" backend: autograd Functions over the hand-written kernels of ``autodistil._C``
(csrc/), which take raw device pointers, strides (in elements) and the current stream.
Same contract as the Triton backend: W[:o, :i] read through the full row stride, dW/db
accumulated into the grad slices (or returned through autograd under DDP/ZeRO)."""
from __future__ import annotations


import torch

from .shared import reference_attention, sliced_layernorm_function, sliced_linear_function

_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_C = None
_why = None
try:
    from .. import _C  # noqa: F811
except ImportError as e:  # not built (no nvcc at install time, or AUTODISTIL_BUILD_CUDA=0)
    _why = f"the CUDA extension autodistil._C is not built ({e}); reinstall with nvcc on PATH"


def unavailable_reason():
    if _C is None:
        return _why
    if not torch.cuda.is_available() or _C.device_count() == 0:
        return "the CUDA extension is built but no CUDA GPU is visible"
    return None


def _p(t):
    return 0 if t is None else t.data_ptr()


def _stream():
    return torch.cuda.current_stream().cuda_stream


def _code(t, name):
    if t.dtype not in _DTYPE:
        raise ValueError(f"cuda backend: {name} has dtype {t.dtype}; allowed fp32, fp16, bf16")
    if not t.is_cuda:
        raise ValueError(f"cuda backend: {name} is on {t.device}; it must be a CUDA tensor")
    return _DTYPE[t.dtype]


def _gemm(a, b, c, M, N, K, sa, sb, sc, bias=None, act=0, pre=None, accumulate=False):
    _C.gemm(_code(c, "output"), _p(a), _p(b), _p(c), _p(bias), _p(pre), M, N, K, *sa, *sb, *sc, act, accumulate,
            _stream())


def _check(*tensors):
    for i, t in enumerate(tensors):
        if t is not None:
            _code(t, f"argument {i}")


class _CudaLinear:
    """The launchers behind the shared autograd Function (autodistil.ops.shared)."""
    check = staticmethod(_check)

    @staticmethod
    def forward(x2, weight, bias, o, i, act):
        n = x2.shape[0]
        y = torch.empty((n, o), device=x2.device, dtype=x2.dtype)
        pre = torch.empty_like(y) if act else None
        _gemm(x2, weight, y, n, o, i, (i, 1), (weight.stride(1), weight.stride(0)), (o, 1), bias, act, pre)
        return y, pre

    @staticmethod
    def gelu_backward(dy2, pre):
        g = torch.empty_like(dy2)
        _C.gelu_backward(_code(dy2, "dy"), _p(dy2), _p(pre), _p(g), dy2.numel(), _stream())
        return g

    @staticmethod
    def dx(dy2, weight, o, i):
        n = dy2.shape[0]
        dx = torch.empty((n, i), device=dy2.device, dtype=dy2.dtype)
        _gemm(dy2, weight, dx, n, i, o, (o, 1), (weight.stride(0), weight.stride(1)), (i, 1))
        return dx

    @staticmethod
    def accumulate_dw(dy2, x2, dst, o, i):
        _gemm(dy2, x2, dst, o, i, dy2.shape[0], (1, o), (i, 1), (dst.stride(0), dst.stride(1)), accumulate=True)


class _CudaLayerNorm:
    check = staticmethod(_check)

    @staticmethod
    def forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps):
        _C.layernorm_forward(_code(x2, "x"), _p(x2), _p(r2), _p(s) if r2 is not None else 0, _p(y), _p(weight),
                             _p(bias), _p(mean), _p(rstd), x2.shape[0], width, eps, _stream())

    @staticmethod
    def backward(dy2, s, weight, mean, rstd, dx, h):
        n, rows = dy2.shape[0], 32
        blocks = (n + rows - 1) // rows
        dw_part = torch.empty((blocks, h), device=dy2.device, dtype=torch.float32)
        db_part = torch.empty_like(dw_part)
        _C.layernorm_backward(_code(dy2, "dy"), _p(dy2), _p(s), _p(weight), _p(mean), _p(rstd), _p(dx), _p(dw_part),
                              _p(db_part), n, h, rows, _stream())
        return dw_part.sum(0), db_part.sum(0)


SlicedLinearCUDA = sliced_linear_function(_CudaLinear, "cuda")
SlicedLayerNormCUDA = sliced_layernorm_function(_CudaLayerNorm, "cuda")


def _attn_strides(q, k, v):
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2))


class AttentionCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, need_probs: bool):
        B, A, T, D = q.shape
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1:
                raise ValueError(f"cuda attention: {name} must have unit stride on its head dim")
        m = key_mask.to(torch.int32).contiguous() if key_mask is not None else None
        o = torch.empty((B, A, T, D), device=q.device, dtype=q.dtype)
        lse = torch.empty((B, A, T), device=q.device, dtype=torch.float32)
        probs = torch.empty((B, A, T, T), device=q.device, dtype=q.dtype) if need_probs else None
        _C.attention_forward(_code(q, "q"), _p(q), _p(k), _p(v), _p(m), m.stride(0) if m is not None else 0, _p(o),
                             _p(lse), _p(probs), B, A, T, D, *_attn_strides(q, k, v), _stream())
        ctx.save_for_backward(q, k, v, m, o, lse)
        ctx.mark_non_differentiable(*([probs] if probs is not None else []))
        return o, probs

    @staticmethod
    def backward(ctx, do, dprobs):
        q, k, v, m, o, lse = ctx.saved_tensors
        B, A, T, D = q.shape
        do = do.contiguous()
        dq = torch.empty((B, A, T, D), device=q.device, dtype=q.dtype)
        dk32 = torch.zeros((B, A, T, D), device=q.device, dtype=torch.float32)
        dv32 = torch.zeros_like(dk32)
        _C.attention_backward(_code(q, "q"), _p(q), _p(k), _p(v), _p(m), m.stride(0) if m is not None else 0, _p(o),
                              _p(do), _p(lse), _p(dq), _p(dk32), _p(dv32), B, A, T, D, *_attn_strides(q, k, v),
                              _stream())
        return dq, dk32.to(k.dtype), dv32.to(v.dtype), None, None


def sliced_linear(x, weight, bias, out_features, in_features, activation=None):
    return SlicedLinearCUDA.apply(x, weight, bias, out_features, in_features, activation)


def sliced_layernorm(x, weight, bias, width, eps, residual=None):
    return SlicedLayerNormCUDA.apply(x, weight, bias, width, eps, residual)


def attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """Probabilities come from the forward kernel itself; they carry no gradient: attention-map
    distillation with gradients and attention dropout take the torch path."""
    if dropout_p > 0 or (need_probs and torch.is_grad_enabled() and q.requires_grad):
        return reference_attention(q, k, v, key_mask, need_probs, dropout_p)
    return AttentionCUDA.apply(q, k, v, key_mask, need_probs)
