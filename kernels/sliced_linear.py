"""Sliced linear in Triton: y = act(x @ W[:o, :i].T + b[:o]), W read through its row stride.

One strided matmul kernel serves the three products (DESIGN.md section 3):
  forward  y[N, o]            = x[N, i] @ W[:o, :i]^T   (+ bias, + exact-erf GELU epilogue)
  dX       dX[N, i]           = dY'[N, o] @ W[:o, :i]
  dW       W.grad[:o, :i]    += dY'^T @ x              (ACCUMULATE: beta = 1, straight into the slice)
No slice of W is ever copied, and no full-size gradient temporary is allocated.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from autodistil.ops.shared import sliced_linear_function

from ._common import INTERPRET, check_device

def _configs():
    if INTERPRET:  # the CPU interpreter: one small config, no autotuning
        return [triton.Config({"BM": 16, "BN": 16, "BK": 16}, num_warps=1)]
    cfgs = []
    for bm, bn, bk, w, s in ((128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
                             (64, 32, 32, 2, 5), (32, 64, 32, 2, 5), (128, 32, 64, 4, 3), (32, 32, 64, 2, 4)):
        cfgs.append(triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s))
    return cfgs  # small tiles keep the Tiny space's 128..224-wide layers busy


@triton.autotune(configs=_configs(), key=["M", "N", "K", "ACT", "ACCUMULATE"])
@triton.jit
def _mm_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, pre_ptr, M, N, K,
               s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
               HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr, ACCUMULATE: tl.constexpr,
               IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C[M, N] (+)= act(A[M, K] @ B[K, N] + bias[N]); every operand by explicit strides."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * s_am + kk[None, :] * s_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if IEEE:  # fp32 stays fp32 (no TF32), as the contract's 1e-5 tolerance needs
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    c_off = rm[:, None] * s_cm + rn[None, :] * s_cn
    if ACT == 1:  # exact GELU: x * Phi(x)
        if SAVE_PRE:
            tl.store(pre_ptr + rm[:, None] * N + rn[None, :], acc.to(pre_ptr.dtype.element_ty), mask=cmask)
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    if ACCUMULATE:
        acc += tl.load(c_ptr + c_off, mask=cmask, other=0.0).to(tl.float32)
    tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _gelu_grad_kernel(dy_ptr, pre_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out = dy * GELU'(pre) (exact erf form), elementwise."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(pre_ptr + offs, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    tl.store(out_ptr + offs, (dy * (cdf + x * pdf)).to(out_ptr.dtype.element_ty), mask=m)


def matmul(a, b, c, M, N, K, strides_a, strides_b, strides_c, bias=None, act=0, pre=None, accumulate=False):
    grid = lambda meta: (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"]))
    _mm_kernel[grid](a, b, c, bias if bias is not None else c, pre if pre is not None else c, M, N, K,
                     *strides_a, *strides_b, *strides_c, HAS_BIAS=bias is not None, ACT=act,
                     SAVE_PRE=pre is not None, ACCUMULATE=accumulate, IEEE=a.dtype == torch.float32)
    return c


def linear_forward(x2, weight, bias, o, i, act: int, save_pre: bool):
    """x2: (N, i) contiguous; weight: (O_max, I_max) row-major (read [:o, :i] by stride)."""
    Nt = x2.shape[0]
    y = torch.empty((Nt, o), device=x2.device, dtype=x2.dtype)
    pre = torch.empty_like(y) if (act and save_pre) else None
    matmul(x2, weight, y, Nt, o, i, (x2.stride(0), 1), (weight.stride(1), weight.stride(0)), (o, 1),
           bias=bias, act=act, pre=pre)
    return y, pre


def gelu_backward(dy, pre):
    out = torch.empty_like(dy)
    n = dy.numel()
    _gelu_grad_kernel[(triton.cdiv(n, 1024),)](dy, pre, out, n, BLOCK=1024)
    return out


class _TritonLinear:
    """The launchers behind the shared autograd Function (autodistil.ops.shared)."""
    check = staticmethod(check_device)

    @staticmethod
    def forward(x2, weight, bias, o, i, act):
        return linear_forward(x2, weight, bias, o, i, act, save_pre=True)

    gelu_backward = staticmethod(gelu_backward)

    @staticmethod
    def dx(dy2, weight, o, i):
        dx = torch.empty((dy2.shape[0], i), device=dy2.device, dtype=dy2.dtype)
        return matmul(dy2, weight, dx, dy2.shape[0], i, o, (o, 1), (weight.stride(0), weight.stride(1)), (i, 1))

    @staticmethod
    def accumulate_dw(dy2, x2, dst, o, i):  # dst[:o, :i] += dy2^T @ x2, through dst's strides
        matmul(dy2, x2, dst, o, i, dy2.shape[0], (1, o), (i, 1), (dst.stride(0), dst.stride(1)), accumulate=True)


SlicedLinearTriton = sliced_linear_function(_TritonLinear, "triton")


def sliced_linear(x, weight, bias, out_features, in_features, activation=None):
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return SlicedLinearTriton.apply(x, weight, bias, out_features, in_features, activation)
    x2 = x.reshape(-1, in_features).contiguous()
    y, _ = linear_forward(x2, weight, bias, out_features, in_features, 1 if activation == "gelu" else 0, False)
    return y.reshape(*x.shape[:-1], out_features)
