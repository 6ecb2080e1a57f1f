"""The "torch" backend: sliced ops in plain PyTorch, behind the same autograd Function templates
as the kernel backends (``autodistil.ops.shared``), so it follows the same contract.

A sliced linear reads ``W[:o, :i]`` as a strided view (BLAS takes the row stride as its
leading dimension, so nothing is copied); its backward accumulates ``dW`` straight into
``W.grad[:o, :i]`` (and ``db`` into ``b.grad[:o]``) instead of letting autograd's slice backward
allocate a zero tensor of the full weight size per sliced use (the Megatron ``main_grad`` idea),
for every parameter that allows it (``shared.inplace_ok``); others get their full-size gradient
through autograd (an op whose parameters all need that runs PyTorch's own F.linear /
F.layer_norm / F.embedding on the slice views). The LayerNorm does the same for gamma/beta,
the embedding for its table.

Under autocast the activation is cast to the autocast dtype and the weight is read from a
low-precision shadow of the whole parameter (``shared.lowp_shadow``: one copy per optimizer
step, shared by all sandwich members and by dX in backward); ZeRO-3 partitions (``ds_id``)
cast just the slice per call. dW accumulates in fp32 into the fp32 grad slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .shared import (
    _grad_slot,
    amp_ctx,
    delivers_inplace,
    needs_grad,
    operand_slice,
    prefix,
    reference_attention,
)
from .surface import op_surface


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)  # exact erf GELU, as BERT


class _TorchLinear:
    """Launchers of the shared sliced-linear template in PyTorch ops (no kernel of our own)."""

    @staticmethod
    def check(x, weight, bias):
        return None

    @staticmethod
    def forward(x2, weight, bias, o, i, act):
        w = operand_slice(weight, x2.dtype, o, i)  # (o, i) view: row stride I_max
        if bias is not None:
            y = torch.addmm(operand_slice(bias, x2.dtype, o), x2, w.t())  # (N, o)
        else:
            y = x2 @ w.t()
        if not act:
            return y, None
        return gelu(y), y

    @staticmethod
    def gelu_backward(dy2, pre):
        # aten's fused exact-erf GELU backward: one kernel, fp32 math, result in dy2's dtype
        return torch.ops.aten.gelu_backward(dy2, pre if pre.dtype == dy2.dtype else pre.to(dy2.dtype))

    @staticmethod
    def dx(dy2, weight, o, i):
        return dy2 @ operand_slice(weight, dy2.dtype, o, i)  # (N, i)

    @staticmethod
    def accumulate_dw(dy2, x2, dst, o, i):
        if dst.dtype == torch.float32 and x2.dtype != dst.dtype and mm_fp32_out_ok(x2.device, x2.dtype):
            # bf16/fp16 operands on tensor cores with an fp32 result (torch.mm out_dtype, CUDA), added
            # to the fp32 slice: a slice-sized temporary, no fp32 copies of the activations
            prefix(dst, o, i).add_(torch.mm(dy2.t(), x2, out_dtype=torch.float32))
            return
        # in-place addmm_ (beta=1) into the slice in its dtype; autocast leaves in-place ops alone
        dt = dst.dtype
        prefix(dst, o, i).addmm_(
            (dy2 if dy2.dtype == dt else dy2.to(dt)).t(), x2 if x2.dtype == dt else x2.to(dt)
        )


_MM_FP32_OUT: dict = {}
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: torch >= 2.5


def mm_fp32_out_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Does torch.mm(a, b, out_dtype=torch.float32) run for `dtype` operands on this device type
    and give the fp32 product? Probed once per (device type, dtype) on a small product (CUDA in
    torch >= 2.8: yes; the CPU has no kernel for it)."""
    key = (device.type, dtype)
    if device.type == "cuda" and key not in _MM_FP32_OUT and torch.cuda.is_current_stream_capturing():
        return False  # the probe reads a result back (a sync): not inside graph capture; probed later
    if key not in _MM_FP32_OUT:
        ok = dtype in (torch.bfloat16, torch.float16) and _probe_mm_fp32_out(device, dtype)
        if ok is None:
            return False  # out of memory while probing: no answer, asked again at the next call
        _MM_FP32_OUT[key] = ok
    return _MM_FP32_OUT[key]


def _probe_mm_fp32_out(device: torch.device, dtype: torch.dtype) -> bool | None:
    """The probe itself, with autocast off: it runs from a backward re-entered under the forward's
    autocast, where the fp32 reference product would otherwise be computed in bf16/fp16 (an error
    above the tolerance, so the probe would say no on every GPU trained under autocast). None when
    the device ran out of memory for the probe's few tensors (a full GPU mid-backward): that says
    nothing about the kernel, so the caller does not keep it."""
    try:
        with amp_ctx((device.type, False, None)):
            g = torch.Generator(device="cpu").manual_seed(0)
            a = torch.randn(24, 40, generator=g).to(device, dtype)
            b = torch.randn(40, 16, generator=g).to(device, dtype)
            r = torch.mm(a, b, out_dtype=torch.float32)
            want = a.float() @ b.float()
            return r.dtype == torch.float32 and bool((r - want).abs().max() <= 1e-3 * want.abs().max())
    except _OOM:
        return None
    except (RuntimeError, TypeError):
        # no such kernel here (the CPU in torch 2.13 raises NotImplementedError, a RuntimeError; older
        # torch has no out_dtype, a TypeError): the answer is "no", and dW takes the addmm_ path
        return False


class _TorchLayerNorm:
    """Launchers of the shared sliced-LayerNorm template: aten's fused LayerNorm forward and
    backward on the gamma/beta slice views where aten takes the dtypes (gamma/beta in the
    activations' dtype; fp32 gamma/beta with bf16/fp16 activations on the CPU only), one kernel
    each way, statistics in aten's dtype; otherwise (e.g. CUDA autocast with fp32 master gamma and
    bf16 activations) fp32 math in plain ops with fp32 statistics. They allocate their own outputs
    (``owns_outputs``)."""

    owns_outputs = True

    @staticmethod
    def check(x, weight, bias, residual):
        return None

    @staticmethod
    def forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps):
        if r2 is not None:
            torch.add(x2, r2, out=s)
        if _fused_ln_ok(s, weight, bias):
            with amp_ctx((s.device.type, False, None)):  # as called: CUDA autocast would run it in fp32
                out, mu, r = torch.native_layer_norm(
                    s, [width], prefix(weight, width), prefix(bias, width), eps
                )
            # the statistics stay as aten returns them ((N, 1), in its own dtype: fp32, except fp16/bf16
            # on the CPU's same-dtype path): its backward takes them back as they came
            return out, mu, r
        sf = s.float()  # (N, h)
        var, mu = torch.var_mean(sf, dim=-1, correction=0)
        r = torch.rsqrt(var + eps)
        # gamma/beta slices are read in their own dtype; type promotion, no copy of them
        y = ((sf - mu[:, None]) * r[:, None] * weight[:width] + bias[:width]).to(s.dtype)
        return y, mu, r

    @staticmethod
    def backward(dy2, s, weight, bias, mean, rstd, h):
        if _fused_ln_ok(s, weight, bias):  # the forward's own test: the statistics came from that path
            with amp_ctx((s.device.type, False, None)):
                gx, dgamma, dbeta = torch.ops.aten.native_layer_norm_backward(
                    dy2, s, [h], mean, rstd, prefix(weight, h), prefix(bias, h), [True, True, True]
                )
            if dgamma.dtype != torch.float32:
                dgamma, dbeta = dgamma.float(), dbeta.float()
            return dgamma, dbeta, gx
        xhat = (s.float() - mean[:, None]) * rstd[:, None]  # (N, h)
        g = dy2.float()
        dbeta = g.sum(0)
        dgamma = (g * xhat).sum(0)
        wdy = g * weight[:h]
        dx = rstd[:, None] * (wdy - wdy.mean(-1, keepdim=True) - xhat * (wdy * xhat).mean(-1, keepdim=True))
        return dgamma, dbeta, dx.to(dy2.dtype)


def _fused_ln_ok(s, weight, bias) -> bool:
    """aten's LayerNorm takes gamma/beta in the activations' dtype everywhere, and fp32 gamma/beta
    with bf16/fp16 activations on the CPU only (its mixed-type kernels; CUDA's reads gamma in the
    activation dtype); other mixes take the plain-ops path."""
    if weight.dtype != bias.dtype:
        return False
    return weight.dtype == s.dtype or (weight.dtype == torch.float32 and s.device.type == "cpu")


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
        g = _grad_slot(weight)[:, : ctx.h]
        g.index_add_(0, ids.reshape(-1), dout.reshape(-1, ctx.h).to(g.dtype))
        return None, None, None


def _autograd_only(*params) -> bool:
    """Gradients are wanted and none of them may be written in place (forced "autograd" mode, or
    parameters such as ZeRO-3 partitions): then PyTorch's own ops on the slice views are exactly
    that delivery (their slice backward hands autograd full-size gradients): "naive eager
    slicing". Without gradients, or with any in-place parameter: our Functions."""
    return needs_grad(*params) and not any(delivers_inplace(p) for p in params)


def _linear_views(x, weight, bias, out_features, in_features, activation=None):
    y = F.linear(x, weight[:out_features, :in_features], None if bias is None else bias[:out_features])
    return gelu(y) if activation == "gelu" else y


def _layernorm_views(x, weight, bias, width, eps, residual=None):
    if residual is not None:
        x = x + residual
    return F.layer_norm(x, (width,), weight[:width], bias[:width], eps)


# PyTorch's own ops on the slice views when every gradient goes through autograd, else our Functions
OPS = op_surface(
    "torch",
    _TorchLinear,
    _TorchLayerNorm,
    _linear_views,
    _layernorm_views,
    use_function=lambda x, params, others=(): not _autograd_only(*params),
)
sliced_linear, sliced_qkv, sliced_layernorm = OPS.sliced_linear, OPS.sliced_qkv, OPS.sliced_layernorm
sliced_linear_layernorm, sliced_ffn_layernorm = OPS.sliced_linear_layernorm, OPS.sliced_ffn_layernorm


def sliced_embedding(ids, weight, width):
    if torch.is_grad_enabled() and weight.requires_grad and delivers_inplace(weight):
        return SlicedEmbeddingFn.apply(ids, weight, width)
    return F.embedding(ids, weight[:, :width])


def attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """The kernel path of this backend is PyTorch's own (SDPA, or the probabilities path)."""
    return reference_attention(q, k, v, key_mask, need_probs, dropout_p)
