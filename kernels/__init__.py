"""Triton kernels, installed as ``autodistil.kernels`` (the "triton" backend of autodistil.ops).

One file per op, each holding its kernels and their launchers (``autodistil.ops.surface``'s
contract); the autograd Functions over them are the shared templates of ``autodistil.ops.shared``,
built into this backend's op surface below by ``op_surface`` (the same code for every backend):
  sliced_linear.py     y = act(x @ W[:o, :i]^T + b[:o]); dX; dW into W.grad[:o, :i]; the GEMM's
                       autotuning and weight operand; its launchers also serve q/k/v as one op
  sliced_layernorm.py  LN(x + residual) over the first h features; dgamma/dbeta into the slices
                       (with the linear launchers: linear + residual + LN, and the whole FFN block)
  attention.py         flash-style attention, any head count, head dim <= 128, T <= 65536, padding mask
                       (its own autograd Function)
Mixed precision: weights/bias/LN parameters may stay fp32 (master weights) while activations are
bf16/fp16; tiles are cast to the activation dtype in registers (tensor cores), fp32 accumulation,
dW added in fp32 to the fp32 grad slice.
Runs on CUDA GPUs, and on the CPU under TRITON_INTERPRET=1 (fp32/fp16; how CI tests it).
"""

from __future__ import annotations

import os


def _why_not():
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install 'autodistil[triton]')"
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return (
            "Triton needs a CUDA GPU here (or TRITON_INTERPRET=1 for its CPU interpreter, set before import)"
        )
    return None


_WHY_NOT = _why_not()  # decided once, at import: it also decides what this module exports below


def unavailable_reason():
    """Why this backend cannot run (None: it can), as decided when the module was imported (setting
    TRITON_INTERPRET later changes neither the answer nor the exported ops)."""
    return _WHY_NOT


if _WHY_NOT is None:
    from autodistil.ops.surface import op_surface

    from .attention import attention, attention_probs  # noqa: F401
    from .sliced_layernorm import _TritonLayerNorm
    from .sliced_linear import _TritonLinear, linear_inference, weight_operand  # noqa: F401

    OPS = op_surface("triton", _TritonLinear, _TritonLayerNorm, linear_inference)
    sliced_linear, sliced_qkv, sliced_layernorm = OPS.sliced_linear, OPS.sliced_qkv, OPS.sliced_layernorm
    sliced_linear_layernorm, sliced_ffn_layernorm = OPS.sliced_linear_layernorm, OPS.sliced_ffn_layernorm
