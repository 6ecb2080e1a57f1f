"""The "torch" backend: sliced ops in plain PyTorch, with the kernel contract's gradient rule.

A sliced linear reads ``W[:o, :i]`` as a strided view (BLAS takes the row stride as its
leading dimension, so nothing is copied) and, in ``grad_mode() == "inplace"``, its backward
accumulates ``dW`` straight into ``W.grad[:o, :i]`` (and ``db`` into ``b.grad[:o]``) instead
of letting autograd's slice backward allocate a zero tensor of the full weight size per
sliced use (the Megatron ``main_grad`` idea). DDP and ZeRO reduce gradients from hooks on
autograd's gradient accumulation and never see such writes (they reduce whatever autograd
delivered, not what a Function put into .grad itself): under them the
trainer switches to ``grad_mode("autograd")`` and gradients flow the ordinary way.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .shared import _grad_slot, grad_mode, reference_attention as attention  # noqa: F401

def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)  # exact erf GELU, as BERT


def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + x * pdf


class SlicedLinearFn(torch.autograd.Function):
    """y = act(x @ W[:o, :i].T + b[:o]); dW/db accumulate into the grad slices."""

    @staticmethod
    def forward(ctx, x, weight, bias, o: int, i: int, activation):
        w = weight[:o, :i]  # view, row stride = weight.shape[1]
        if w.dtype != x.dtype:  # autocast: the cast is the only copy, as F.linear's
            w = w.to(x.dtype)
        x2 = x.reshape(-1, i)  # (N, i)
        if bias is not None:
            b = bias[:o].to(x.dtype)
            y = torch.addmm(b, x2, w.t())  # (N, o)
        else:
            y = x2 @ w.t()
        pre = None
        if activation == "gelu":
            pre = y
            y = gelu(y)
        ctx.o, ctx.i, ctx.act, ctx.has_bias = o, i, activation, bias is not None
        ctx.save_for_backward(x2, weight, bias, pre)
        return y.reshape(*x.shape[:-1], o)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, pre = ctx.saved_tensors
        o, i = ctx.o, ctx.i
        dy2 = dy.reshape(-1, o)  # (N, o)
        if ctx.act == "gelu":
            dy2 = dy2 * gelu_grad(pre)
        dx = None
        if ctx.needs_input_grad[0]:
            w = weight[:o, :i]
            dx = (dy2 @ w.to(dy2.dtype)).reshape(*dy.shape[:-1], i)  # (N, i)
        if ctx.needs_input_grad[1]:
            g = _grad_slot(weight)[:o, :i]
            g.addmm_(dy2.t().to(g.dtype), x2.to(g.dtype))  # beta=1: accumulate in place
        if bias is not None and ctx.needs_input_grad[2]:
            _grad_slot(bias)[:o].add_(dy2.sum(0).to(bias.dtype))
        return dx, None, None, None, None, None


class SlicedEmbeddingFn(torch.autograd.Function):
    """E[ids, :h]; the backward index-adds into E.grad[:, :h] (no vocab x H_max temporary)."""

    @staticmethod
    def forward(ctx, ids, weight, h: int):
        ctx.save_for_backward(ids, weight)
        ctx.h = h
        return F.embedding(ids, weight[:, :h])  # (..., h)

    @staticmethod
    def backward(ctx, dout):
        ids, weight = ctx.saved_tensors
        g = _grad_slot(weight)[:, :ctx.h]
        g.index_add_(0, ids.reshape(-1), dout.reshape(-1, ctx.h).to(g.dtype))
        return None, None, None


def sliced_linear(x, weight, bias, out_features, in_features, activation=None):
    if grad_mode() == "inplace" and torch.is_grad_enabled() and weight.requires_grad:
        return SlicedLinearFn.apply(x, weight, bias, out_features, in_features, activation)
    y = F.linear(x, weight[:out_features, :in_features], None if bias is None else bias[:out_features])
    return gelu(y) if activation == "gelu" else y


def sliced_embedding(ids, weight, width):
    if grad_mode() == "inplace" and torch.is_grad_enabled() and weight.requires_grad:
        return SlicedEmbeddingFn.apply(ids, weight, width)
    return F.embedding(ids, weight[:, :width])


def sliced_layernorm(x, weight, bias, width, eps, residual=None):
    if residual is not None:
        x = x + residual
    return F.layer_norm(x, (width,), weight[:width], bias[:width], eps)
