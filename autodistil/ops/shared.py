"""Pieces every backend shares (torch, Triton, CUDA), below all of them: how weight gradients
are delivered (per parameter), the autocast rule, the low-precision weight shadow, the autograd
Function templates of the sliced ops, and the PyTorch reference attention.

Gradient delivery. A sliced op's backward writes dW straight into ``p.grad[:o, :i]`` (no
full-size temporary) only for a parameter that is a leaf, not a DTensor, and has no DeepSpeed
ZeRO-3 ``ds_id``; for any other parameter (FSDP views of a flat parameter, ZeRO-3 partitions,
computed weights) the full-size gradient is returned through autograd so the wrapper's hooks
see it. The decision is taken in the Function's forward and stored on ctx: backward may run on
an autograd device thread, where a context variable set by the caller is not visible.
``grad_mode_ctx("autograd")`` forces autograd delivery for every parameter (DeepSpeed ZeRO-1/2
reduce from hooks on autograd's gradient accumulation); it is a context (a ContextVar) and
always restores what was there, there is no process-wide switch.

Mixed precision (as Megatron-LM / DeepSpeed). Parameters stay fp32 (the optimizer's master
weights). Under ``torch.autocast`` a sliced linear casts the *activation* to the autocast dtype
and hands the launchers the fp32 weight unchanged; dW accumulates in fp32 into the fp32 grad
slice. Backward runs under the autocast state forward saw. A sliced LayerNorm computes in fp32
and returns ``promote_types(x.dtype, residual.dtype)`` (the residual stream stays fp32 in the
model, as torch's autocast keeps layer_norm in fp32).
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import torch
import torch.nn.functional as F

GRAD_MODES = ("inplace", "autograd")
_GRAD_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("autodistil_grad_mode", default="inplace")


def grad_mode() -> str:
    """"inplace" (default: in place wherever the parameter allows it) or "autograd" (forced)."""
    return _GRAD_MODE.get()


@contextlib.contextmanager
def set_context(var: contextvars.ContextVar, value):
    """Within the block, `var` holds `value`; the previous value comes back on exit (also on error,
    and per thread / task: these switches are ContextVars, never process-wide)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def grad_mode_ctx(mode: str):
    """Within the block, sliced ops deliver weight gradients as `mode`: "inplace" (where the
    parameter allows it, see ``inplace_ok``) or "autograd" (always returned through autograd).
    Always restores the previous mode. Decided per op at forward time."""
    if mode not in GRAD_MODES:
        raise ValueError(f"grad mode {mode!r} is not allowed: use 'inplace' or 'autograd'")
    return set_context(_GRAD_MODE, mode)


_DTENSOR = None


def _is_dtensor(t) -> bool:
    global _DTENSOR
    if _DTENSOR is None:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # torch built without distributed
            DTensor = ()
        _DTENSOR = DTensor
    return bool(_DTENSOR) and isinstance(t, _DTENSOR)


def inplace_ok(p: torch.Tensor) -> bool:
    """May a backward write p's gradient into p.grad itself? Only for a leaf, non-DTensor
    tensor without a DeepSpeed ZeRO-3 ``ds_id`` (whose .grad is what an optimizer reads)."""
    return p.is_leaf and not _is_dtensor(p) and not hasattr(p, "ds_id")


def delivers_inplace(p: torch.Tensor | None) -> bool:
    """Forward-time decision for one parameter under the current grad mode."""
    return p is not None and p.requires_grad and grad_mode() == "inplace" and inplace_ok(p)


def _grad_slot(p: torch.Tensor) -> torch.Tensor:
    """The parameter's full-size .grad, created once (zeros) if absent."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def deliver_grad(p: torch.Tensor, inplace: bool, fill) -> torch.Tensor | None:
    """fill(dst) accumulates p's gradient into the full-size dst (a slice addressed through dst's
    strides). inplace: dst is p.grad, returns None; else a full-size fp32/param-dtype zero tensor
    filled and returned for autograd to accumulate (hooks of DDP / ZeRO / FSDP fire on it)."""
    if inplace:
        fill(_grad_slot(p))
        return None
    g = torch.zeros_like(p)
    fill(g)
    return g


# --- autocast ----------------------------------------------------------------------------
def amp_state(device_type: str) -> tuple:
    """(device_type, enabled, dtype) of autocast for that device, as forward sees it."""
    if torch.is_autocast_enabled(device_type):
        return device_type, True, torch.get_autocast_dtype(device_type)
    return device_type, False, None


def amp_ctx(state: tuple):
    """Re-enter a saved autocast state (what torch.amp.custom_bwd does, for any device type);
    nothing to enter when autocast was off then and is off now."""
    device_type, enabled, dtype = state
    if enabled:
        return torch.autocast(device_type, dtype=dtype)
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def compute_dtype(x: torch.Tensor, state: tuple) -> torch.dtype:
    """The dtype a sliced linear computes in: the autocast dtype for floating x under autocast,
    otherwise x's own dtype."""
    return state[2] if state[1] and x.is_floating_point() else x.dtype


# --- low-precision shadow of a weight ----------------------------------------------------
_SHADOW_ATTR = "_autodistil_lowp_shadow"
_NO_SHADOW_ATTR = "_autodistil_no_lowp_shadow"


def invalidate_lowp_shadow(params) -> None:
    """Drop the cached shadows of these parameters. Call it after writing a parameter through
    ``.data`` outside a torch.optim step (``p.data.copy_(...)``, a hand-written EMA or SGD,
    ``p.data = t``): such writes bump neither ``_version`` nor the optimizer-step counter, so the
    cache cannot see them."""
    for p in params:
        if hasattr(p, _SHADOW_ATTR):
            delattr(p, _SHADOW_ATTR)


def disable_lowp_shadow(params) -> None:
    """Never cache a shadow for these parameters (callers cast the slice they need per call):
    for parameters whose storage is rewritten behind autograd on every step, e.g. through
    ``.data`` by an outside optimizer wrapper; the trainer does it for DeepSpeed's engine."""
    for p in params:
        setattr(p, _NO_SHADOW_ATTR, True)
        if hasattr(p, _SHADOW_ATTR):
            delattr(p, _SHADOW_ATTR)


_OPT_STEPS = 0          # torch.optim steps taken in this process (any optimizer)
_STEP_HOOK = None


def _count_step(optimizer, args, kwargs) -> None:
    global _OPT_STEPS
    _OPT_STEPS += 1


def _opt_steps() -> int:
    """A counter of optimizer steps: the fused AdamW kernel updates parameters without bumping
    their ``_version`` (torch 2.13, tested), so the shadow's key also holds this counter, kept by
    a global step post-hook on torch.optim (it only counts; it changes no numerics)."""
    global _STEP_HOOK
    if _STEP_HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook
        _STEP_HOOK = register_optimizer_step_post_hook(_count_step)
    return _OPT_STEPS


def lowp_shadow(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """A full-size copy of `param` in `dtype` (the caller slices it), cached on the parameter and
    rebuilt when its version counter, storage or shape changes or any torch.optim optimizer took a
    step: an optimizer step (fused, foreach or for-loop AdamW), ``load_state_dict`` and ``.to()``
    all refresh it, so within one optimizer step every sandwich member and every backward dX share
    one copy.
    Returns `param` itself when it already has `dtype`; None where no cache can be trusted
    (ZeRO-3 partitions with ``ds_id``, DTensors, non-leaf tensors, parameters marked with
    ``disable_lowp_shadow``): callers then cast the slice they need per call."""
    if param.dtype == dtype:
        return param
    if not param.is_leaf or _is_dtensor(param) or hasattr(param, "ds_id") or getattr(param, _NO_SHADOW_ATTR, False):
        return None
    key = (param._version, _opt_steps(), param.data_ptr(), tuple(param.shape), param.device)
    cache = getattr(param, _SHADOW_ATTR, None)
    if cache is None:
        cache = {}
        setattr(param, _SHADOW_ATTR, cache)
    hit = cache.get(dtype)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        shadow = param.detach().to(dtype)
    cache[dtype] = (key, shadow)
    return shadow


def lowp_shadow_bytes(params) -> int:
    """Bytes held by cached shadows of these parameters (for memory reports)."""
    n = 0
    for p in params:
        for _, s in getattr(p, _SHADOW_ATTR, {}).values():
            n += s.numel() * s.element_size()
    return n


def operand_slice(param: torch.Tensor, dtype: torch.dtype, index) -> torch.Tensor:
    """param[index] in `dtype`: a view of the parameter (same dtype) or of its cached shadow;
    a per-call cast of just that slice where no shadow may be kept (ZeRO-3)."""
    s = lowp_shadow(param, dtype)
    return s[index] if s is not None else param[index].to(dtype)


# --- autograd Function templates ------------------------------------------------------------
def rows(t: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """t as contiguous (N, width) rows in `dtype`; no op is dispatched for what already holds
    (these templates run per layer and per sandwich member: host time counts on a GPU)."""
    if t.dim() != 2:
        t = t.reshape(-1, width)
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def layernorm_buffers(x, residual, width: int, outputs: bool = True):
    """(x2, r2, y, s, mean, rstd): rows of x (and residual) in one activation dtype
    (promote_types of the two), the output, the pre-norm sum kept for backward (x2 itself when
    there is no residual), fp32 statistics; y, mean, rstd are None when not `outputs` (a launcher
    that returns its own)."""
    dt = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x2 = rows(x, width, dt)
    r2 = rows(residual, width, dt) if residual is not None else None
    s = torch.empty_like(x2) if r2 is not None else x2
    if not outputs:
        return x2, r2, None, s, None, None
    y = torch.empty_like(x2)
    mean = torch.empty(x2.shape[0], device=x.device, dtype=torch.float32)
    return x2, r2, y, s, mean, torch.empty_like(mean)


def sliced_linear_function(k, name: str):
    """The autograd Function of y = act(x @ W[:o, :i]^T + b[:o]) over a backend's launchers:
    k.check(x, weight, bias); k.forward(x2, weight, bias, o, i, act) -> (y, pre) in x2.dtype;
    k.gelu_backward(dy2, pre) -> dy2'; k.dx(dy2, weight, o, i) -> (N, i) in dy2.dtype;
    k.accumulate_dw(dy2, x2, dst, o, i): dst[:o, :i] += dy2^T @ x2 through dst's strides (fp32 dst).
    x2 is in the compute dtype (autocast's, or x's own); weight and bias arrive in their own dtype.
    Optional: k.capture() -> state at forward, k.restore(state) -> a context entered around backward
    (a launcher setting that backward must see as forward saw it)."""

    class SlicedLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, o: int, i: int, activation):
            k.check(x, weight, bias)
            amp = amp_state(x.device.type)
            act = 1 if activation == "gelu" else 0
            x2 = rows(x, i, compute_dtype(x, amp))  # activations, never weights
            y, pre = k.forward(x2, weight, bias, o, i, act)
            ctx.save_for_backward(x2, weight, bias, pre)
            ctx.o, ctx.i, ctx.act, ctx.amp = o, i, act, amp
            ctx.kstate = k.capture() if hasattr(k, "capture") else None
            ctx.inplace_w, ctx.inplace_b = delivers_inplace(weight), delivers_inplace(bias)
            return y if x.dim() == 2 else y.reshape(*x.shape[:-1], o)

        @staticmethod
        def backward(ctx, dy):
            x2, weight, bias, pre = ctx.saved_tensors
            o, i = ctx.o, ctx.i
            with amp_ctx(ctx.amp), (k.restore(ctx.kstate) if ctx.kstate is not None else contextlib.nullcontext()):
                dy2 = rows(dy, o, x2.dtype)  # (N, o)
                if ctx.act:
                    dy2 = k.gelu_backward(dy2, pre)
                dx = None
                if ctx.needs_input_grad[0]:
                    dx = k.dx(dy2, weight, o, i)
                    if dy.dim() != 2:
                        dx = dx.reshape(*dy.shape[:-1], i)
                gw = gb = None
                if ctx.needs_input_grad[1]:
                    gw = deliver_grad(weight, ctx.inplace_w, lambda dst: k.accumulate_dw(dy2, x2, dst, o, i))
                if bias is not None and ctx.needs_input_grad[2]:
                    db = dy2.sum(0, dtype=torch.float32)
                    gb = deliver_grad(bias, ctx.inplace_b, lambda dst: dst[:o].add_(db))
            return dx, gw, gb, None, None, None

    SlicedLinear.__name__ = SlicedLinear.__qualname__ = f"SlicedLinear{name.capitalize()}"
    return SlicedLinear


def sliced_layernorm_function(k, name: str):
    """The autograd Function of LN(x + residual) over the first `width` features, over a backend's
    launchers: k.check(...); k.forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps) fills y,
    mean, rstd; k.backward(dy2, s, weight, mean, rstd, dx, width) -> (dgamma (h,), dbeta (h,)) in
    fp32 with dx filled. A launcher with ``owns_outputs = True`` (the torch one: aten's fused
    LayerNorm allocates its results) gets None for y, mean, rstd, returns (y, mean, rstd) from
    forward, and is called as k.backward(dy2, s, weight, bias, mean, rstd, width) ->
    (dgamma, dbeta, dx), so it can take the same path its forward took.
    Computes in fp32; output dtype promote_types(x.dtype, residual.dtype), under autocast too."""

    class SlicedLayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, width: int, eps: float, residual):
            k.check(x, weight, bias, residual)
            owns = getattr(k, "owns_outputs", False)
            x2, r2, y, s, mean, rstd = layernorm_buffers(x, residual, width, outputs=not owns)
            own = k.forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps)
            if owns:
                y, mean, rstd = own
            ctx.save_for_backward(s, weight, bias, mean, rstd)
            ctx.width, ctx.has_res, ctx.shape = width, residual is not None, x.shape
            ctx.amp = amp_state(x.device.type)
            ctx.inplace_w, ctx.inplace_b = delivers_inplace(weight), delivers_inplace(bias)
            return y if x.dim() == 2 else y.reshape(x.shape)

        @staticmethod
        def backward(ctx, dy):
            s, weight, bias, mean, rstd = ctx.saved_tensors
            h = ctx.width
            with amp_ctx(ctx.amp):
                dy2 = rows(dy, h, s.dtype)
                if getattr(k, "owns_outputs", False):
                    dw, db, dx = k.backward(dy2, s, weight, bias, mean, rstd, h)
                else:
                    dx = torch.empty_like(dy2)
                    dw, db = k.backward(dy2, s, weight, mean, rstd, dx, h)
                gw = deliver_grad(weight, ctx.inplace_w, lambda dst: dst[:h].add_(dw)) \
                    if ctx.needs_input_grad[1] else None
                gb = deliver_grad(bias, ctx.inplace_b, lambda dst: dst[:h].add_(db)) \
                    if ctx.needs_input_grad[2] else None
            if len(ctx.shape) != 2:
                dx = dx.reshape(ctx.shape)
            return dx, gw, gb, None, None, (dx if ctx.has_res else None)

    SlicedLayerNorm.__name__ = SlicedLayerNorm.__qualname__ = f"SlicedLayerNorm{name.capitalize()}"
    return SlicedLayerNorm


def reference_attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """q, k, v: (B, A, T, d); key_mask: (B, T) with 1 = attend, or None.
    Returns (context (B, A, T, d), probs (B, A, T, T) or None). A sequence whose mask is all
    zero (all padding) gets 0 context, 0 probabilities and zero gradients."""
    d = q.shape[-1]
    if not need_probs:
        m = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout_p), None
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # (B, A, T, T)
    if key_mask is not None:
        keep = key_mask[:, None, None, :].to(torch.bool)       # (B, 1, 1, T)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)  # finite: no NaN rows
    probs = torch.softmax(scores, dim=-1)
    if key_mask is not None:  # an all-padding sequence: zero rows (softmax alone gives uniform ones)
        probs = probs * keep.any(-1, keepdim=True).to(probs.dtype)
    p = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return p @ v, probs
