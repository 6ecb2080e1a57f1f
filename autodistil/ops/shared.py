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
    """ "inplace" (default: in place wherever the parameter allows it) or "autograd" (forced)."""
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
    """The parameter's full-size .grad, created once (zeros) if absent. Never inside CUDA graph capture:
    the graph would re-zero it at every replay (an eager run of the same code creates it first)."""
    if p.grad is None:
        if p.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"a gradient of shape {tuple(p.shape)} would be created inside CUDA graph "
                f"capture; run the captured code once eagerly first (warm-up) so every "
                f"gradient exists"
            )
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


_OPT_STEPS = 0  # torch.optim steps taken in this process (any optimizer)
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


def _shadow_key(param: torch.Tensor) -> tuple:
    """What a shadow was made from. A frozen parameter without a gradient (a teacher's) cannot be
    stepped by an optimizer, so the optimizer-step counter does not invalidate its shadow."""
    frozen = not param.requires_grad and param.grad is None
    steps = None if frozen else _opt_steps()
    return (param._version, steps, param.data_ptr(), tuple(param.shape), param.device)


_REFRESHES = 0  # shadows built or refreshed in this process (a statistic; see shadow_refreshes)


def shadow_refreshes() -> int:
    """How many times a shadow was built or refreshed in this process. A CUDA-graph runner compares it
    around a capture: a refresh there would be baked into that one graph (distill/graphs.py)."""
    return _REFRESHES


def _refreshable(shadow: torch.Tensor, param: torch.Tensor) -> bool:
    """May `shadow` be rewritten in place with param's values? Same shape and device, and not an
    inference tensor seen outside inference mode (torch refuses in-place writes to those)."""
    return (
        shadow.shape == param.shape
        and shadow.device == param.device
        and (not shadow.is_inference() or torch.is_inference_mode_enabled())
    )


def lowp_shadow(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """A full-size copy of `param` in `dtype` (the caller slices it), cached on the parameter and
    refreshed when its version counter, storage or shape changes or any torch.optim optimizer took a
    step (the last only for a parameter that requires grad or has one: a frozen teacher's shadow is
    made once): an optimizer step (fused, foreach or for-loop AdamW), ``load_state_dict`` and ``.to()``
    all refresh it, so within one optimizer step every sandwich member and every backward dX share
    one copy. A refresh writes into the existing copy when the shape and device still match (its
    address stays the same: CUDA graphs read it by address); otherwise a new copy is made.
    Returns `param` itself when it already has `dtype`; None where no cache can be trusted
    (ZeRO-3 partitions with ``ds_id``, DTensors, non-leaf tensors, parameters marked with
    ``disable_lowp_shadow``): callers then cast the slice they need per call."""
    global _REFRESHES
    if param.dtype == dtype:
        return param
    if (
        not param.is_leaf
        or _is_dtensor(param)
        or hasattr(param, "ds_id")
        or getattr(param, _NO_SHADOW_ATTR, False)
    ):
        return None
    key = _shadow_key(param)
    cache = getattr(param, _SHADOW_ATTR, None)
    if cache is None:
        cache = {}
        setattr(param, _SHADOW_ATTR, cache)
    hit = cache.get(dtype)
    if hit is not None and hit[0] == key:
        return hit[1]
    _REFRESHES += 1
    with torch.no_grad():
        if hit is not None and _refreshable(hit[1], param):
            shadow = hit[1].copy_(param.detach())  # in place: the same address
        else:
            shadow = param.detach().to(dtype)
    cache[dtype] = (key, shadow)
    return shadow


def refresh_lowp_shadows(params) -> int:
    """Bring every cached shadow of these parameters up to date in place (one foreach copy per
    dtype), whatever its key says, and record the parameters' current keys: what a CUDA-graph
    step runs before its replays, which read the shadows by address and run no Python. Returns
    the number of shadows refreshed."""
    global _REFRESHES
    groups: dict = {}
    for p in params:
        for dt, (_, s) in getattr(p, _SHADOW_ATTR, {}).items():
            if _refreshable(s, p):
                groups.setdefault(dt, []).append((p, s))
    n = 0
    with torch.no_grad():
        for pairs in groups.values():
            torch._foreach_copy_([s for _, s in pairs], [p.detach() for p, _ in pairs])
            for p, s in pairs:
                getattr(p, _SHADOW_ATTR)[s.dtype] = (_shadow_key(p), s)
            n += len(pairs)
    _REFRESHES += n
    return n


def lowp_shadows(params) -> list:
    """The cached shadow tensors of these parameters (any dtype), in parameter order."""
    return [s for p in params for _, s in getattr(p, _SHADOW_ATTR, {}).values()]


def lowp_shadow_bytes(params) -> int:
    """Bytes held by cached shadows of these parameters (for memory reports)."""
    n = 0
    for p in params:
        for _, s in getattr(p, _SHADOW_ATTR, {}).values():
            n += s.numel() * s.element_size()
    return n


def prefix(t: torch.Tensor, *sizes: int) -> torch.Tensor:
    """The leading block t[:sizes[0]] or t[:sizes[0], :sizes[1]] (one size per dimension of a 1-D or
    2-D t, checked against its shape) as a view through t's own strides: what slicing gives, for
    about a third of slicing's host time on this project's CPU (as_strided skips Python's
    indexing). Only where autograd does not record (inside the Functions' forward/backward, under
    no_grad). Tensor subclasses (DTensor, ...) are sliced: they may have no as_strided rule."""
    n, shape = len(sizes), t.shape
    if n != len(shape) or n > 2 or sizes[0] > shape[0] or (n == 2 and sizes[1] > shape[1]):
        raise ValueError(f"prefix: block {sizes} is not inside a tensor of shape {tuple(shape)} (1-D or 2-D)")
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        return t[tuple(slice(0, k) for k in sizes)]
    return t.as_strided(sizes, t.stride(), t.storage_offset())


def operand_slice(param: torch.Tensor, dtype: torch.dtype, *sizes: int) -> torch.Tensor:
    """param's leading block of `sizes` in `dtype`: a view of the parameter (same dtype) or of its
    cached shadow; a per-call cast of just that block where no shadow may be kept (ZeRO-3)."""
    s = lowp_shadow(param, dtype)
    return prefix(s, *sizes) if s is not None else prefix(param, *sizes).to(dtype)


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


def _restore(k, state):
    """The launcher's saved setting re-entered around backward (k.capture/k.restore), or nothing."""
    return k.restore(state) if state is not None else contextlib.nullcontext()


def _capture(k):
    return k.capture() if hasattr(k, "capture") else None


def _linear_grads(
    k,
    dy2,
    x2,
    weight,
    bias,
    o: int,
    i: int,
    want_x: bool,
    want_w: bool,
    want_b: bool,
    inplace_w: bool,
    inplace_b: bool,
):
    """(dx (N, i) or None, grad of weight, grad of bias) of y = x2 @ W[:o, :i]^T + b[:o] from dy2
    (N, o) in x2's dtype; weight/bias gradients delivered as ``deliver_grad`` says."""
    dx = k.dx(dy2, weight, o, i) if want_x else None
    gw = deliver_grad(weight, inplace_w, lambda dst: k.accumulate_dw(dy2, x2, dst, o, i)) if want_w else None
    gb = None
    if bias is not None and want_b:
        db = dy2.sum(0, dtype=torch.float32)
        gb = deliver_grad(bias, inplace_b, lambda dst: prefix(dst, o).add_(db))
    return dx, gw, gb


def _layernorm_forward(k, x, weight, bias, width: int, eps: float, residual):
    """(y (N, width), s, mean, rstd) of LN(x + residual) through a backend's LayerNorm launchers
    (see sliced_layernorm_function); s is the pre-norm sum backward needs."""
    owns = getattr(k, "owns_outputs", False)
    x2, r2, y, s, mean, rstd = layernorm_buffers(x, residual, width, outputs=not owns)
    own = k.forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps)
    if owns:
        y, mean, rstd = own
    return y, s, mean, rstd


def _layernorm_grads(
    k, dy, s, weight, bias, mean, rstd, h: int, want_w: bool, want_b: bool, inplace_w: bool, inplace_b: bool
):
    """(dx (N, h) in s's dtype: the gradient of the pre-norm sum, grad of gamma, grad of beta)."""
    dy2 = rows(dy, h, s.dtype)
    if getattr(k, "owns_outputs", False):
        dw, db, dx = k.backward(dy2, s, weight, bias, mean, rstd, h)
    else:
        dx = torch.empty_like(dy2)
        dw, db = k.backward(dy2, s, weight, mean, rstd, dx, h)
    gw = deliver_grad(weight, inplace_w, lambda dst: prefix(dst, h).add_(dw)) if want_w else None
    gb = deliver_grad(bias, inplace_b, lambda dst: prefix(dst, h).add_(db)) if want_b else None
    return dx, gw, gb


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
            ctx.kstate = _capture(k)
            ctx.inplace_w, ctx.inplace_b = delivers_inplace(weight), delivers_inplace(bias)
            return y if x.dim() == 2 else y.reshape(*x.shape[:-1], o)

        @staticmethod
        def backward(ctx, dy):
            x2, weight, bias, pre = ctx.saved_tensors
            o, i = ctx.o, ctx.i
            need = ctx.needs_input_grad
            with amp_ctx(ctx.amp), _restore(k, ctx.kstate):
                dy2 = rows(dy, o, x2.dtype)  # (N, o)
                if ctx.act:
                    dy2 = k.gelu_backward(dy2, pre)
                dx, gw, gb = _linear_grads(
                    k, dy2, x2, weight, bias, o, i, need[0], need[1], need[2], ctx.inplace_w, ctx.inplace_b
                )
            if dx is not None and dy.dim() != 2:
                dx = dx.reshape(*dy.shape[:-1], i)
            return dx, gw, gb, None, None, None

    SlicedLinear.__name__ = SlicedLinear.__qualname__ = f"SlicedLinear{name.capitalize()}"
    return SlicedLinear


def sliced_qkv_function(k, name: str):
    """One autograd Function for the three sliced linears of self-attention, which read the same
    input: (x @ Wq[:o, :i]^T + bq[:o], the same with Wk, bk and Wv, bv), over the sliced-linear
    launchers (see sliced_linear_function). The same numbers as three SlicedLinear calls (the same
    launcher calls) except for the order of one sum: dX's three terms are added in x's dtype as
    autograd adds them, but before, not after, any other gradient x receives (float addition is not
    associative: fp32 differences of an ulp or so). One Function, one cast of x and one backward call
    instead of three: host work is what a training step at the paper's batch sizes waits on
    (docs/guides/kernels.md, "Host time"). Where some of the six parameters are delivered in
    place and others not (``shared.inplace_ok``), all go through this Function, each with its own
    delivery; three separate torch-backend calls would have run PyTorch's own F.linear for a linear
    whose two parameters both need autograd delivery (the same values, up to the rounding of dW under
    autocast: fp32 accumulation here, the autocast dtype there)."""

    class SlicedQKV(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, wq, wk, wv, bq, bk, bv, o: int, i: int):
            ws, bs = (wq, wk, wv), (bq, bk, bv)
            for w, b in zip(ws, bs):
                k.check(x, w, b)
            amp = amp_state(x.device.type)
            x2 = rows(x, i, compute_dtype(x, amp))
            ys = [k.forward(x2, w, b, o, i, 0)[0] for w, b in zip(ws, bs)]
            ctx.save_for_backward(x2, *ws, *bs)
            ctx.o, ctx.i, ctx.amp, ctx.shape, ctx.x_dtype = o, i, amp, x.shape, x.dtype
            ctx.kstate = _capture(k)
            ctx.inplace = [(delivers_inplace(w), delivers_inplace(b)) for w, b in zip(ws, bs)]
            ctx.set_materialize_grads(False)  # an unused output's gradient is None, not zeros
            if x.dim() != 2:
                ys = [y.reshape(*x.shape[:-1], o) for y in ys]
            return tuple(ys)

        @staticmethod
        def backward(ctx, *dys):
            x2, *p = ctx.saved_tensors
            o, i = ctx.o, ctx.i
            need = ctx.needs_input_grad
            dx, gws, gbs = None, [None] * 3, [None] * 3
            with amp_ctx(ctx.amp), _restore(k, ctx.kstate):
                for j in (2, 1, 0):  # v, k, q: the order autograd runs three separate linears' backward
                    if dys[j] is None:
                        continue
                    dy2 = rows(dys[j], o, x2.dtype)
                    d, gws[j], gbs[j] = _linear_grads(
                        k, dy2, x2, p[j], p[3 + j], o, i, need[0], need[1 + j], need[4 + j], *ctx.inplace[j]
                    )
                    if d is None:
                        continue
                    # each term cast to x's dtype (fp32 under autocast), then summed, as autograd does
                    d = d if d.dtype == ctx.x_dtype else d.to(ctx.x_dtype)
                    dx = d if dx is None else dx.add_(d)
            if dx is not None and len(ctx.shape) != 2:
                dx = dx.reshape(*ctx.shape[:-1], i)
            return (dx, *gws, *gbs, None, None)

    SlicedQKV.__name__ = SlicedQKV.__qualname__ = f"SlicedQKV{name.capitalize()}"
    return SlicedQKV


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
            y, s, mean, rstd = _layernorm_forward(k, x, weight, bias, width, eps, residual)
            ctx.save_for_backward(s, weight, bias, mean, rstd)
            ctx.width, ctx.has_res, ctx.shape = width, residual is not None, x.shape
            ctx.amp = amp_state(x.device.type)
            ctx.inplace_w, ctx.inplace_b = delivers_inplace(weight), delivers_inplace(bias)
            return y if x.dim() == 2 else y.reshape(x.shape)

        @staticmethod
        def backward(ctx, dy):
            s, weight, bias, mean, rstd = ctx.saved_tensors
            need = ctx.needs_input_grad
            with amp_ctx(ctx.amp):
                dx, gw, gb = _layernorm_grads(
                    k,
                    dy,
                    s,
                    weight,
                    bias,
                    mean,
                    rstd,
                    ctx.width,
                    need[1],
                    need[2],
                    ctx.inplace_w,
                    ctx.inplace_b,
                )
            if len(ctx.shape) != 2:
                dx = dx.reshape(ctx.shape)
            return dx, gw, gb, None, None, (dx if ctx.has_res else None)

    SlicedLayerNorm.__name__ = SlicedLayerNorm.__qualname__ = f"SlicedLayerNorm{name.capitalize()}"
    return SlicedLayerNorm


def sliced_linear_layernorm_function(kl, kn, name: str):
    """One autograd Function for a sliced linear followed by the sliced LayerNorm of its output plus
    a residual, LN(x @ W[:o, :i]^T + b[:o] + residual) over o features with gamma[:o], beta[:o] (the
    attention-output and FFN-output blocks of a BERT layer), over the sliced-linear launchers `kl`
    and the LayerNorm launchers `kn` (see the two templates above). Same numbers as SlicedLinear
    then SlicedLayerNorm (the same launcher calls; the LayerNorm's input gradient cast to the
    linear's compute dtype once, as autograd casts it between the two), in one Function instead of two.
    As with sliced_qkv_function, mixed in-place / autograd delivery takes this Function for all."""

    class SlicedLinearLayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, gamma, beta, o: int, i: int, eps: float, residual):
            kl.check(x, weight, bias)
            amp = amp_state(x.device.type)
            x2 = rows(x, i, compute_dtype(x, amp))
            y, _ = kl.forward(x2, weight, bias, o, i, 0)  # (N, o)
            kn.check(y, gamma, beta, residual)
            out, s, mean, rstd = _layernorm_forward(kn, y, gamma, beta, o, eps, residual)
            ctx.save_for_backward(x2, weight, bias, s, gamma, beta, mean, rstd)
            ctx.o, ctx.i, ctx.amp, ctx.shape = o, i, amp, x.shape
            ctx.has_res = residual is not None
            ctx.kstate = _capture(kl)
            ctx.inplace = (
                delivers_inplace(weight),
                delivers_inplace(bias),
                delivers_inplace(gamma),
                delivers_inplace(beta),
            )
            return out if x.dim() == 2 else out.reshape(*x.shape[:-1], o)

        @staticmethod
        def backward(ctx, dout):
            x2, weight, bias, s, gamma, beta, mean, rstd = ctx.saved_tensors
            o, i = ctx.o, ctx.i
            need = ctx.needs_input_grad
            iw, ib, ig, ie = ctx.inplace
            with amp_ctx(ctx.amp), _restore(kl, ctx.kstate):
                dsum, gg, ge = _layernorm_grads(
                    kn, dout, s, gamma, beta, mean, rstd, o, need[3], need[4], ig, ie
                )
                dy2 = rows(dsum, o, x2.dtype)
                dx, gw, gb = _linear_grads(kl, dy2, x2, weight, bias, o, i, need[0], need[1], need[2], iw, ib)
            lead = ctx.shape[:-1]
            if dx is not None and len(ctx.shape) != 2:
                dx = dx.reshape(*lead, i)
            dres = None
            if ctx.has_res and need[8]:
                dres = dsum if len(ctx.shape) == 2 else dsum.reshape(*lead, o)
            return dx, gw, gb, gg, ge, None, None, None, dres

    SlicedLinearLayerNorm.__name__ = SlicedLinearLayerNorm.__qualname__ = (
        f"SlicedLinearLayerNorm{name.capitalize()}"
    )
    return SlicedLinearLayerNorm


def sliced_ffn_layernorm_function(kl, kn, name: str):
    """One autograd Function for a BERT layer's whole feed-forward block,
    LN(GELU(x @ W1[:f, :h]^T + b1[:f]) @ W2[:h, :f]^T + b2[:h] + x) over h features with
    gamma[:h], beta[:h], over the sliced-linear launchers `kl` and the LayerNorm launchers `kn`.
    The same numbers as SlicedLinear (GELU), SlicedLinear, SlicedLayerNorm with x as the residual
    (the same launcher calls; x's two gradient terms added in x's dtype, as autograd adds them), in
    one Function instead of three. As with sliced_qkv_function, mixed in-place / autograd delivery
    takes this Function for all."""

    class SlicedFFNLayerNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w1, b1, w2, b2, gamma, beta, f: int, h: int, eps: float):
            kl.check(x, w1, b1)
            kl.check(x, w2, b2)
            amp = amp_state(x.device.type)
            x2 = rows(x, h, compute_dtype(x, amp))
            z, pre = kl.forward(x2, w1, b1, f, h, 1)  # (N, f), GELU'd
            y, _ = kl.forward(z, w2, b2, h, f, 0)  # (N, h)
            kn.check(y, gamma, beta, x)
            out, s, mean, rstd = _layernorm_forward(kn, y, gamma, beta, h, eps, x)
            ctx.save_for_backward(x2, w1, b1, pre, z, w2, b2, s, gamma, beta, mean, rstd)
            ctx.f, ctx.h, ctx.amp, ctx.shape, ctx.x_dtype = f, h, amp, x.shape, x.dtype
            ctx.kstate = _capture(kl)
            ctx.inplace = tuple(delivers_inplace(p) for p in (w1, b1, w2, b2, gamma, beta))
            return out if x.dim() == 2 else out.reshape(x.shape[:-1] + (h,))

        @staticmethod
        def backward(ctx, dout):
            x2, w1, b1, pre, z, w2, b2, s, gamma, beta, mean, rstd = ctx.saved_tensors
            f, h = ctx.f, ctx.h
            need = ctx.needs_input_grad
            i1, ib1, i2, ib2, ig, ie = ctx.inplace
            with amp_ctx(ctx.amp), _restore(kl, ctx.kstate):
                dsum, gg, ge = _layernorm_grads(
                    kn, dout, s, gamma, beta, mean, rstd, h, need[5], need[6], ig, ie
                )
                dy2 = rows(dsum, h, z.dtype)
                dz, gw2, gb2 = _linear_grads(
                    kl, dy2, z, w2, b2, h, f, need[0] or need[1] or need[2], need[3], need[4], i2, ib2
                )
                gw1 = gb1 = dx = None
                if dz is not None:
                    dz = kl.gelu_backward(rows(dz, f, x2.dtype), pre)
                    dx, gw1, gb1 = _linear_grads(kl, dz, x2, w1, b1, f, h, need[0], need[1], need[2], i1, ib1)
            if need[0]:
                # x is also the residual: its two terms added in x's dtype, as autograd adds them
                r = dsum if dsum.dtype == ctx.x_dtype else dsum.to(ctx.x_dtype)
                dx = r if dx is None else r + (dx if dx.dtype == ctx.x_dtype else dx.to(ctx.x_dtype))
                if len(ctx.shape) != 2:
                    dx = dx.reshape(ctx.shape)
            return dx, gw1, gb1, gw2, gb2, gg, ge, None, None, None

    SlicedFFNLayerNorm.__name__ = SlicedFFNLayerNorm.__qualname__ = f"SlicedFFNLayerNorm{name.capitalize()}"
    return SlicedFFNLayerNorm


def needs_grad(*ts) -> bool:
    """Will autograd record an op on these tensors (None allowed)? The kernel backends' test for
    taking their autograd Function rather than the inference path."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


# --- the fused ops as their parts: what a backend runs where it does not take the fused Function --
def qkv_parts(linear, x, weights, biases, o: int, i: int) -> tuple:
    """sliced_qkv as three calls of a backend's sliced_linear."""
    return tuple(linear(x, w, b, o, i) for w, b in zip(weights, biases))


def linear_layernorm_parts(
    linear, layernorm, x, weight, bias, gamma, beta, o: int, i: int, eps: float, residual
):
    """sliced_linear_layernorm as a backend's sliced_linear, then its sliced_layernorm."""
    return layernorm(linear(x, weight, bias, o, i), gamma, beta, o, eps, residual)


def ffn_layernorm_parts(linear, layernorm, x, w1, b1, w2, b2, gamma, beta, f: int, h: int, eps: float):
    """sliced_ffn_layernorm as a backend's sliced_linear (GELU), sliced_linear, sliced_layernorm (x the
    residual)."""
    return layernorm(linear(linear(x, w1, b1, f, h, "gelu"), w2, b2, h, f), gamma, beta, h, eps, x)


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
        keep = key_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, T)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)  # finite: no NaN rows
    probs = torch.softmax(scores, dim=-1)
    if key_mask is not None:  # an all-padding sequence: zero rows (softmax alone gives uniform ones)
        probs = probs * keep.any(-1, keepdim=True).to(probs.dtype)
    p = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    return p @ v, probs
