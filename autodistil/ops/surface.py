"""The backend contract in code: what a backend's launchers provide (``LinearLaunchers``,
``LayerNormLaunchers``), and the one helper that turns them into the backend's op surface
(``op_surface``): the five sliced ops ``autodistil.ops.dispatch`` calls, each over the shared
autograd Function templates of ``ops.shared`` (so every backend computes gradients, mixed
precision and in-place weight-gradient delivery by the same code), with the backend's rule for
when the Function runs and what runs otherwise.

Launchers: torch ``ops/torch_backend.py`` (``_TorchLinear``, ``_TorchLayerNorm``), Triton
``kernels/sliced_linear.py`` (``_TritonLinear``) and ``kernels/sliced_layernorm.py``
(``_TritonLayerNorm``), CUDA ``ops/cuda_backend.py`` (``_CudaLinear``, ``_CudaLayerNorm``); the
table of ops, launchers and tests is in docs/guides/kernels.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

import torch

from .shared import (
    ffn_layernorm_parts,
    linear_layernorm_parts,
    qkv_parts,
    sliced_ffn_layernorm_function,
    sliced_layernorm_function,
    sliced_linear_function,
    sliced_linear_layernorm_function,
    sliced_qkv_function,
)

Tensor = torch.Tensor


@runtime_checkable
class LinearLaunchers(Protocol):
    """A sliced linear's launchers: y = act(x @ W[:o, :i]^T + b[:o]) and its gradients, reading W, b
    through their strides (never a copy of the slice)."""

    def check(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
        """Refuse inputs the kernels cannot take (device, dtype, shape), with a one-line message."""

    def forward(
        self, x2: Tensor, weight: Tensor, bias: Optional[Tensor], o: int, i: int, act: int
    ) -> tuple[Tensor, Optional[Tensor]]:
        """(y (N, o) in x2's dtype, the pre-activation kept for GELU's backward or None); act 1: GELU."""

    def gelu_backward(self, dy2: Tensor, pre: Tensor) -> Tensor:
        """dy2 times GELU'(pre), in dy2's dtype."""

    def dx(self, dy2: Tensor, weight: Tensor, o: int, i: int) -> Tensor:
        """dy2 @ W[:o, :i]: (N, i) in dy2's dtype."""

    def accumulate_dw(self, dy2: Tensor, x2: Tensor, dst: Tensor, o: int, i: int) -> None:
        """dst[:o, :i] += dy2^T @ x2 through dst's strides (dst fp32: the parameter's gradient)."""


@runtime_checkable
class LayerNormLaunchers(Protocol):
    """A sliced LayerNorm's launchers: LN(x + residual) over the first `width` features."""

    def check(self, x: Tensor, weight: Tensor, bias: Tensor) -> None:
        """Refuse inputs the kernels cannot take, with a one-line message."""

    def forward(self, x2, r2, s, y, weight, bias, mean, rstd, width: int, eps: float):
        """Fill s (x + residual), y, mean and rstd (fp32) for the (N, width) rows."""

    def backward(self, dy2, s, weight, mean, rstd, dx, h: int) -> tuple[Tensor, Tensor]:
        """Fill dx; return (dgamma, dbeta) in fp32."""


class StatefulLaunchers(Protocol):
    """Optional: a launcher setting that backward must see as forward saw it (the Triton GEMM's
    weight operand): ``capture()`` at forward, ``restore(state)`` a context entered around backward."""

    def capture(self): ...

    def restore(self, state): ...


def launcher_methods(proto) -> list:
    """The methods a launcher Protocol asks for, in definition order."""
    return [m for m, v in vars(proto).items() if not m.startswith("_") and callable(v)]


def _uses_grad(x, params: tuple, others: tuple = ()) -> bool:
    from .shared import needs_grad

    return needs_grad(x, *params, *others)


@dataclass(frozen=True)
class OpSurface:
    """A backend's five sliced ops (the signatures ``autodistil.ops.dispatch`` calls) and the autograd
    Functions they run."""

    sliced_linear: Callable
    sliced_qkv: Callable
    sliced_layernorm: Callable
    sliced_linear_layernorm: Callable
    sliced_ffn_layernorm: Callable
    functions: dict


def op_surface(
    name: str,
    linear: LinearLaunchers,
    layernorm: LayerNormLaunchers,
    linear_otherwise: Callable,
    layernorm_otherwise: Optional[Callable] = None,
    use_function: Callable[..., bool] = _uses_grad,
) -> OpSurface:
    """The op surface of backend `name` over its launchers. ``use_function(x, params, others)`` (the
    input, the op's parameters, its other tensors such as a residual) says when the autograd Functions
    run (default: when a gradient is wanted); otherwise ``linear_otherwise(x, weight, bias, o, i,
    activation)`` runs the linear (an inference path, or PyTorch's own ops), the LayerNorm runs
    ``layernorm_otherwise(x, weight, bias, width, eps, residual)`` when given (else its Function), and
    the fused ops run as their parts over this surface's own linear and LayerNorm."""
    for obj, proto in ((linear, LinearLaunchers), (layernorm, LayerNormLaunchers)):
        missing = [m for m in launcher_methods(proto) if not callable(getattr(obj, m, None))]
        if missing:
            raise TypeError(
                f"backend {name!r}: {getattr(obj, '__name__', obj)} is not {proto.__name__}: it lacks "
                f"{', '.join(missing)}"
            )
    fns = {
        "linear": sliced_linear_function(linear, name),
        "qkv": sliced_qkv_function(linear, name),
        "layernorm": sliced_layernorm_function(layernorm, name),
        "linear_layernorm": sliced_linear_layernorm_function(linear, layernorm, name),
        "ffn_layernorm": sliced_ffn_layernorm_function(linear, layernorm, name),
    }

    def sliced_linear(x, weight, bias, out_features, in_features, activation=None):
        if use_function(x, (weight, bias)):
            return fns["linear"].apply(x, weight, bias, out_features, in_features, activation)
        return linear_otherwise(x, weight, bias, out_features, in_features, activation)

    def sliced_layernorm(x, weight, bias, width, eps, residual=None):
        if layernorm_otherwise is None or use_function(x, (weight, bias), (residual,)):
            return fns["layernorm"].apply(x, weight, bias, width, eps, residual)
        return layernorm_otherwise(x, weight, bias, width, eps, residual)

    def sliced_qkv(x, weights, biases, out_features, in_features):
        if use_function(x, (*weights, *biases)):
            return fns["qkv"].apply(x, *weights, *biases, out_features, in_features)
        return qkv_parts(sliced_linear, x, weights, biases, out_features, in_features)

    def sliced_linear_layernorm(x, weight, bias, gamma, beta, out_features, in_features, eps, residual=None):
        if use_function(x, (weight, bias, gamma, beta), (residual,)):
            return fns["linear_layernorm"].apply(
                x, weight, bias, gamma, beta, out_features, in_features, eps, residual
            )
        return linear_layernorm_parts(
            sliced_linear,
            sliced_layernorm,
            x,
            weight,
            bias,
            gamma,
            beta,
            out_features,
            in_features,
            eps,
            residual,
        )

    def sliced_ffn_layernorm(x, w1, b1, w2, b2, gamma, beta, ffn, hidden, eps):
        if use_function(x, (w1, b1, w2, b2, gamma, beta)):
            return fns["ffn_layernorm"].apply(x, w1, b1, w2, b2, gamma, beta, ffn, hidden, eps)
        return ffn_layernorm_parts(
            sliced_linear, sliced_layernorm, x, w1, b1, w2, b2, gamma, beta, ffn, hidden, eps
        )

    return OpSurface(
        sliced_linear, sliced_qkv, sliced_layernorm, sliced_linear_layernorm, sliced_ffn_layernorm, fns
    )
