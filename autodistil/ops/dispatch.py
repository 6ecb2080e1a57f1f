"""The one dispatch point for sliced ops: backend "torch" | "triton" | "cuda".

Every op takes the *full* parameter and the active sizes; a backend reads the leading
slice through the parameter's strides and never copies it (docs/guides/kernels.md, "The kernel contract").
The backend is the model's (``SuperBert(backend=...)``, passed as ``backend=``) or, when that
is None, the one of the enclosing ``use_backend(name)`` context (a ContextVar that always
restores; default "torch"). There is no process-wide switch.
Backends other than "torch" load lazily on first use and, when they cannot run, say once
and clearly why (``backend_status()``).
"""

from __future__ import annotations

import contextvars
import importlib
from types import ModuleType

import torch

from .shared import needs_grad, reference_attention, set_context

BACKENDS = ("torch", "triton", "cuda")
_MODULES = {
    "torch": "autodistil.ops.torch_backend",
    "triton": "autodistil.kernels",
    "cuda": "autodistil.ops.cuda_backend",
}
_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("autodistil_backend", default="torch")
_loaded: dict[str, ModuleType] = {}
_failed: dict[str, str] = {}


class BackendUnavailable(RuntimeError):
    pass


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not allowed: choose one of {list(BACKENDS)}")
    return name


def backend_module(name: str | None = None) -> ModuleType:
    name = _check_name(name or _BACKEND.get())
    if name in _loaded:
        return _loaded[name]
    if name in _failed:
        raise BackendUnavailable(f"backend '{name}' is unavailable: {_failed[name]}")
    try:
        mod = importlib.import_module(_MODULES[name])
        why = getattr(mod, "unavailable_reason", lambda: None)()
    except Exception as e:  # an optional extension must never break import of autodistil
        why = f"{type(e).__name__}: {e}"
    if why:
        _failed[name] = why
        raise BackendUnavailable(f"backend '{name}' is unavailable: {why}")
    _loaded[name] = mod
    return mod


def backend_status() -> dict:
    """{name: "ok" | reason} for every backend (loads them)."""
    out = {}
    for n in BACKENDS:
        try:
            backend_module(n)
            out[n] = "ok"
        except BackendUnavailable as e:
            out[n] = str(e)
    return out


def get_backend() -> str:
    """The backend of the enclosing ``use_backend`` context ("torch" outside any)."""
    return _BACKEND.get()


def use_backend(name: str):
    """Within the block, ops called with backend=None use `name`; the previous one is restored
    on exit (also on error, and per thread / task: a ContextVar)."""
    backend_module(name)  # unknown or unavailable: fail here, not at the first op
    return set_context(_BACKEND, name)


# --- boundary checks (flash-attention style: name the tensor and what was expected) ----
def _check_linear(x, weight, bias, o, i):
    if weight.dim() != 2:
        raise ValueError(f"sliced_linear: weight must be 2-D (O_max, I_max), got shape {tuple(weight.shape)}")
    if not (0 < o <= weight.shape[0] and 0 < i <= weight.shape[1]):
        raise ValueError(f"sliced_linear: slice ({o}, {i}) is outside weight of shape {tuple(weight.shape)}")
    if x.shape[-1] != i:
        raise ValueError(f"sliced_linear: x has last dim {x.shape[-1]}, expected in_features={i}")
    if weight.stride(1) != 1:
        raise ValueError("sliced_linear: weight must be row-major (stride 1 on its last dim)")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] < o):
        raise ValueError(
            f"sliced_linear: bias must be 1-D with >= {o} entries, got shape {tuple(bias.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"sliced_linear: x must be floating point, got {x.dtype}")


def sliced_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out_features: int,
    in_features: int,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """act(x @ weight[:o, :i].T + bias[:o]); x: (..., i) -> (..., o). activation: None | "gelu"."""
    if activation not in (None, "gelu"):
        raise ValueError(f"sliced_linear: activation {activation!r} is not allowed: None or 'gelu'")
    _check_linear(x, weight, bias, out_features, in_features)
    return backend_module(backend).sliced_linear(x, weight, bias, out_features, in_features, activation)


def _check_norm_params(op: str, gamma, beta, width: int) -> None:
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.dim() != 1 or t.stride(0) != 1:
            raise ValueError(f"{op}: {name} must be 1-D with unit stride, got shape {tuple(t.shape)}")
        if not 0 < width <= t.shape[0]:
            raise ValueError(f"{op}: width {width} outside {name} of size {t.shape[0]}")


def sliced_qkv(
    x: torch.Tensor, weights, biases, out_features: int, in_features: int, backend: str | None = None
) -> tuple:
    """(x @ W[:o, :i].T + b[:o] for (W, b) in zip(weights, biases)): the three projections of
    self-attention from one input, as one autograd Function where the backend takes one (one Function's
    host work instead of three; the same numbers up to the order of dX's sum, see
    ``shared.sliced_qkv_function``). weights, biases: 3 each (a bias may be None)."""
    weights, biases = tuple(weights), tuple(biases)
    if len(weights) != 3 or len(biases) != 3:
        raise ValueError(
            f"sliced_qkv: needs 3 weights and 3 biases (None allowed), got {len(weights)} and {len(biases)}"
        )
    for w, b in zip(weights, biases):
        _check_linear(x, w, b, out_features, in_features)
    return backend_module(backend).sliced_qkv(x, weights, biases, out_features, in_features)


def sliced_linear_layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    out_features: int,
    in_features: int,
    eps: float = 1e-12,
    residual: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm(x @ weight[:o, :i].T + bias[:o] + residual) over o features with gamma[:o], beta[:o]:
    a BERT layer's attention-output block (and an FFN output on the module path), as one autograd
    Function where the backend takes one (one Function's host work instead of two; the same numbers)."""
    _check_linear(x, weight, bias, out_features, in_features)
    _check_norm_params("sliced_linear_layernorm", gamma, beta, out_features)
    want = (*x.shape[:-1], out_features)
    if residual is not None and tuple(residual.shape) != want:
        raise ValueError(
            f"sliced_linear_layernorm: residual shape {tuple(residual.shape)} != output shape {want}"
        )
    return backend_module(backend).sliced_linear_layernorm(
        x, weight, bias, gamma, beta, out_features, in_features, eps, residual
    )


def sliced_ffn_layernorm(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    ffn: int,
    hidden: int,
    eps: float = 1e-12,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm(GELU(x @ w1[:f, :h].T + b1[:f]) @ w2[:h, :f].T + b2[:h] + x) over h = `hidden`
    features with gamma[:h], beta[:h], f = `ffn`: a BERT layer's feed-forward block, as one
    autograd Function where the backend takes one (one Function's host work instead of three; the same
    numbers)."""
    _check_linear(x, w1, b1, ffn, hidden)
    if w2.dim() != 2 or not (0 < hidden <= w2.shape[0] and 0 < ffn <= w2.shape[1]):
        raise ValueError(
            f"sliced_ffn_layernorm: w2 must be 2-D with a ({hidden}, {ffn}) slice, got shape "
            f"{tuple(w2.shape)}"
        )
    if w2.stride(1) != 1:
        raise ValueError("sliced_ffn_layernorm: w2 must be row-major (stride 1 on its last dim)")
    if b2 is not None and (b2.dim() != 1 or b2.shape[0] < hidden):
        raise ValueError(
            f"sliced_ffn_layernorm: b2 must be 1-D with >= {hidden} entries, got shape {tuple(b2.shape)}"
        )
    _check_norm_params("sliced_ffn_layernorm", gamma, beta, hidden)
    return backend_module(backend).sliced_ffn_layernorm(x, w1, b1, w2, b2, gamma, beta, ffn, hidden, eps)


def sliced_embedding(
    ids: torch.Tensor, weight: torch.Tensor, width: int, backend: str | None = None
) -> torch.Tensor:
    """weight[ids, :width]; ids: (...) int -> (..., width)."""
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"sliced_embedding: ids must be int32/int64, got {ids.dtype}")
    if not 0 < width <= weight.shape[1]:
        raise ValueError(f"sliced_embedding: width {width} outside 1..{weight.shape[1]}")
    mod = backend_module(backend)
    fn = getattr(mod, "sliced_embedding", None) or backend_module("torch").sliced_embedding
    return fn(ids, weight, width)


def sliced_layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    width: int,
    eps: float = 1e-12,
    residual: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm(x + residual) over the first `width` features with weight[:width], bias[:width]."""
    if x.shape[-1] != width:
        raise ValueError(f"sliced_layernorm: x has last dim {x.shape[-1]}, expected width={width}")
    if not 0 < width <= weight.shape[0]:
        raise ValueError(f"sliced_layernorm: width {width} outside 1..{weight.shape[0]}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(
            f"sliced_layernorm: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}"
        )
    return backend_module(backend).sliced_layernorm(x, weight, bias, width, eps, residual)


def sliced_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    need_probs: bool = False,
    dropout_p: float = 0.0,
    backend: str | None = None,
):
    """Softmax attention for any head count. q, k, v: (B, A, T, d); key_mask: (B, T), 1 = attend.
    Returns (context (B, A, T, d), probs (B, A, T, T) if need_probs else None)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"sliced_attention: q, k, v must share shape (B, A, T, d); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_mask is not None and tuple(key_mask.shape) != (q.shape[0], q.shape[2]):
        raise ValueError(
            f"sliced_attention: key_mask must be (B, T)={(q.shape[0], q.shape[2])}, "
            f"got {tuple(key_mask.shape)}"
        )
    mod = backend_module(backend)
    if dropout_p > 0 or (need_probs and needs_grad(q, k, v)):
        # attention dropout, or probabilities that carry gradient (attention-map distillation):
        # the one torch fallback; backends implement only the kernel path
        return reference_attention(q, k, v, key_mask, need_probs, dropout_p)
    return mod.attention(q, k, v, key_mask, need_probs, 0.0)
