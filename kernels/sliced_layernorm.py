"""Sliced LayerNorm in Triton: y = LN(x + residual) over the first h of H_max features with
gamma[:h], beta[:h] (read in place); backward writes dgamma/dbeta into the grad slices."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import grad_slot, inplace_grads


@triton.jit
def _ln_fwd(x_ptr, r_ptr, s_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, H, eps,
            HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < H
    x = tl.load(x_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(r_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(s_ptr + row * H + cols, x.to(s_ptr.dtype.element_ty), mask=m)  # the sum, for backward
    mean = tl.sum(x, axis=0) / H
    xc = tl.where(m, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * H + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ln_bwd(dy_ptr, s_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part, db_part, N, H, ROWS,
            BLOCK: tl.constexpr):
    """Each program: ROWS rows; dx per row, dgamma/dbeta partial sums per program."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < H
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    for r in range(0, ROWS):
        row = pid * ROWS + r
        if row < N:
            x = tl.load(s_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * H + cols, mask=m, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            xhat = tl.where(m, (x - mean) * rstd, 0.0)
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, axis=0) / H
            c2 = tl.sum(wdy, axis=0) / H
            dx = (wdy - (xhat * c1 + c2)) * rstd
            tl.store(dx_ptr + row * H + cols, dx.to(dx_ptr.dtype.element_ty), mask=m)
            dw += dy * xhat
            db += dy
    tl.store(dw_part + pid * H + cols, dw, mask=m)
    tl.store(db_part + pid * H + cols, db, mask=m)


class SlicedLayerNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, width: int, eps: float, residual):
        shape = x.shape
        x2 = x.reshape(-1, width).contiguous()
        r2 = residual.reshape(-1, width).contiguous() if residual is not None else None
        N = x2.shape[0]
        y = torch.empty_like(x2)
        s = torch.empty_like(x2) if r2 is not None else x2
        mean = torch.empty(N, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        BLOCK = triton.next_power_of_2(width)
        _ln_fwd[(N,)](x2, r2 if r2 is not None else x2, s, y, weight, bias, mean, rstd, width, eps,
                      HAS_RES=r2 is not None, BLOCK=BLOCK)
        ctx.save_for_backward(s, weight, bias, mean, rstd)
        ctx.width, ctx.has_res, ctx.shape = width, residual is not None, shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        s, weight, bias, mean, rstd = ctx.saved_tensors
        h = ctx.width
        dy2 = dy.reshape(-1, h).contiguous()
        N = dy2.shape[0]
        ROWS = 16
        n_prog = triton.cdiv(N, ROWS)
        dx = torch.empty_like(dy2)
        dw_part = torch.empty((n_prog, h), device=dy.device, dtype=torch.float32)
        db_part = torch.empty_like(dw_part)
        _ln_bwd[(n_prog,)](dy2, s, weight, mean, rstd, dx, dw_part, db_part, N, h, ROWS,
                           BLOCK=triton.next_power_of_2(h))
        dw, db = dw_part.sum(0), db_part.sum(0)  # (h,)
        gw = gb = None
        if inplace_grads():
            if ctx.needs_input_grad[1]:
                grad_slot(weight)[:h].add_(dw.to(weight.dtype))
            if ctx.needs_input_grad[2]:
                grad_slot(bias)[:h].add_(db.to(bias.dtype))
        else:
            gw, gb = torch.zeros_like(weight), torch.zeros_like(bias)
            gw[:h], gb[:h] = dw.to(weight.dtype), db.to(bias.dtype)
        dx = dx.reshape(ctx.shape)
        return dx, gw, gb, None, None, (dx if ctx.has_res else None)


def sliced_layernorm(x, weight, bias, width, eps, residual=None):
    return SlicedLayerNormTriton.apply(x, weight, bias, width, eps, residual)
