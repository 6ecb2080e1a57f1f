"""Sliced LayerNorm in Triton: y = LN(x + residual) over the first h of H_max features with
gamma[:h], beta[:h] (read in place); backward writes dgamma/dbeta into the grad slices.

Mixed precision (launcher contract, autodistil.ops.shared): x, residual, the saved sum and y are
in the activation dtype (bf16/fp16 under autocast); gamma/beta stay in their own dtype (fp32
master parameters) and are read as such; all statistics and arithmetic are fp32; dgamma/dbeta
are fp32 per-program partial sums reduced in a fixed order (deterministic)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_device


@triton.jit
def _ln_fwd(
    x_ptr,
    r_ptr,
    s_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    mean_ptr,
    rstd_ptr,
    H,
    eps,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # rows * H can pass 2^31
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
def _ln_bwd(
    dy_ptr, s_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part, db_part, N, H, ROWS, BLOCK: tl.constexpr
):
    """Each program: ROWS rows; dx per row, dgamma/dbeta partial sums per program."""
    pid = tl.program_id(0).to(tl.int64)
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


class _TritonLayerNorm:
    """The launchers behind the shared autograd Function (autodistil.ops.shared)."""

    check = staticmethod(check_device)

    @staticmethod
    def forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps):
        _ln_fwd[(x2.shape[0],)](
            x2,
            r2 if r2 is not None else x2,
            s,
            y,
            weight,
            bias,
            mean,
            rstd,
            width,
            eps,
            HAS_RES=r2 is not None,
            BLOCK=triton.next_power_of_2(width),
        )

    @staticmethod
    def backward(dy2, s, weight, mean, rstd, dx, h):
        N, ROWS = dy2.shape[0], 16
        n_prog = triton.cdiv(N, ROWS)
        dw_part = torch.empty((n_prog, h), device=dy2.device, dtype=torch.float32)
        db_part = torch.empty_like(dw_part)
        _ln_bwd[(n_prog,)](
            dy2, s, weight, mean, rstd, dx, dw_part, db_part, N, h, ROWS, BLOCK=triton.next_power_of_2(h)
        )
        return dw_part.sum(0), db_part.sum(0)
