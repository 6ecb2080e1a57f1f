"""Pieces every backend shares (torch, Triton, CUDA), below all of them: the gradient
delivery mode, how weight gradients are delivered under it, the autograd Function templates
of the kernel backends, and the PyTorch reference attention they fall back to."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

_GRAD_MODE = "inplace"


def grad_mode() -> str:
    return _GRAD_MODE


def set_grad_mode(mode: str) -> None:
    global _GRAD_MODE
    if mode not in ("inplace", "autograd"):
        raise ValueError(f"grad mode {mode!r} is not allowed: use 'inplace' or 'autograd'")
    _GRAD_MODE = mode


@contextlib.contextmanager
def grad_mode_ctx(mode: str):
    old = _GRAD_MODE
    set_grad_mode(mode)
    try:
        yield
    finally:
        set_grad_mode(old)


def _grad_slot(p: torch.Tensor) -> torch.Tensor:
    """The parameter's full-size .grad, created once (zeros) if absent."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def deliver_param_grads(weight, bias, o: int, fill_w, db):
    """fill_w(dst) accumulates dW into dst (full-size tensor, slice addressed by strides);
    db: (o,) or None. "inplace": straight into .grad (returns None, None); "autograd":
    full-size gradients returned to autograd (DDP / ZeRO hooks fire on them)."""
    if grad_mode() == "inplace":
        if fill_w is not None:
            fill_w(_grad_slot(weight))
        if bias is not None and db is not None:
            _grad_slot(bias)[:o].add_(db.to(bias.dtype))
        return None, None
    gw = gb = None
    if fill_w is not None:
        gw = torch.zeros_like(weight)
        fill_w(gw)
    if bias is not None and db is not None:
        gb = torch.zeros_like(bias)
        gb[:o] = db.to(bias.dtype)
    return gw, gb


def layernorm_buffers(x, residual, width: int):
    """(x2, r2, y, s, mean, rstd): rows of x (and residual), the output, the pre-norm sum kept
    for backward (x2 itself when there is no residual), fp32 statistics."""
    x2 = x.reshape(-1, width).contiguous()
    r2 = residual.reshape(-1, width).contiguous() if residual is not None else None
    n = x2.shape[0]
    y = torch.empty_like(x2)
    s = torch.empty_like(x2) if r2 is not None else x2
    mean = torch.empty(n, device=x.device, dtype=torch.float32)
    return x2, r2, y, s, mean, torch.empty_like(mean)


def sliced_linear_function(k, name: str):
    """The autograd Function of y = act(x @ W[:o, :i]^T + b[:o]) over a backend's launchers:
    k.check(x, weight, bias); k.forward(x2, weight, bias, o, i, act) -> (y, pre);
    k.gelu_backward(dy2, pre) -> dy2'; k.dx(dy2, weight, o, i) -> (N, i);
    k.accumulate_dw(dy2, x2, dst, o, i): dst[:o, :i] += dy2^T @ x2 through dst's strides."""

    class SlicedLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, o: int, i: int, activation):
            if weight.dtype != x.dtype:
                raise ValueError(f"{name} sliced_linear: weight dtype {weight.dtype} != x dtype {x.dtype} "
                                 f"(keep parameters in the compute dtype, or use the torch backend under autocast)")
            k.check(x, weight, bias)
            act = 1 if activation == "gelu" else 0
            x2 = x.reshape(-1, i).contiguous()  # activations, never weights
            y, pre = k.forward(x2, weight, bias, o, i, act)
            ctx.save_for_backward(x2, weight, bias, pre)
            ctx.o, ctx.i, ctx.act = o, i, act
            return y.reshape(*x.shape[:-1], o)

        @staticmethod
        def backward(ctx, dy):
            x2, weight, bias, pre = ctx.saved_tensors
            o, i = ctx.o, ctx.i
            dy2 = dy.reshape(-1, o).contiguous()  # (N, o)
            if ctx.act:
                dy2 = k.gelu_backward(dy2, pre)
            dx = k.dx(dy2, weight, o, i).reshape(*dy.shape[:-1], i) if ctx.needs_input_grad[0] else None
            fill = (lambda dst: k.accumulate_dw(dy2, x2, dst, o, i)) if ctx.needs_input_grad[1] else None
            db = dy2.sum(0, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
            gw, gb = deliver_param_grads(weight, bias, o, fill, db)
            return dx, gw, gb, None, None, None

    SlicedLinear.__name__ = SlicedLinear.__qualname__ = f"SlicedLinear{name.capitalize()}"
    return SlicedLinear


def sliced_layernorm_function(k, name: str):
    """The autograd Function of LN(x + residual) over the first `width` features, over a backend's
    launchers: k.check(...); k.forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps);
    k.backward(dy2, s, weight, mean, rstd, dx, width) -> (dgamma (h,), dbeta (h,)) in fp32."""

    class SlicedLayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, width: int, eps: float, residual):
            k.check(x, weight, bias, residual)
            x2, r2, y, s, mean, rstd = layernorm_buffers(x, residual, width)
            k.forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps)
            ctx.save_for_backward(s, weight, bias, mean, rstd)
            ctx.width, ctx.has_res, ctx.shape = width, residual is not None, x.shape
            return y.reshape(x.shape)

        @staticmethod
        def backward(ctx, dy):
            s, weight, bias, mean, rstd = ctx.saved_tensors
            h = ctx.width
            dy2 = dy.reshape(-1, h).contiguous()
            dx = torch.empty_like(dy2)
            dw, db = k.backward(dy2, s, weight, mean, rstd, dx, h)
            gw, gb = deliver_param_grads(weight, bias, h, lambda dst: dst[:h].add_(dw.to(dst.dtype)), db)
            dx = dx.reshape(ctx.shape)
            return dx, gw, gb, None, None, (dx if ctx.has_res else None)

    SlicedLayerNorm.__name__ = SlicedLayerNorm.__qualname__ = f"SlicedLayerNorm{name.capitalize()}"
    return SlicedLayerNorm


def reference_attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """q, k, v: (B, A, T, d); key_mask: (B, T) with 1 = attend, or None.
    Returns (context (B, A, T, d), probs (B, A, T, T) or None)."""
    d = q.shape[-1]
    if not need_probs:
        m = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # (B, A, T, T)
    if key_mask is not None:
        scores = scores + (1.0 - key_mask[:, None, None, :].to(scores.dtype)) * torch.finfo(scores.dtype).min
    probs = torch.softmax(scores, dim=-1)
    p = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return p @ v, probs
