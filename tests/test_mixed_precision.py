"""Mixed precision on the torch backend (CPU bf16 autocast): fp32 master weights, activations in
bf16, weights read from a low-precision shadow refreshed once per optimizer step (no per-call
copy of a weight slice), dW accumulated in fp32 into the fp32 grad slices."""

import pytest
import torch

from autodistil import ops
from autodistil.nn import SuperBert, SuperBertConfig
from autodistil.ops.shared import (
    disable_lowp_shadow,
    invalidate_lowp_shadow,
    lowp_shadow,
    lowp_shadow_bytes,
    refresh_lowp_shadows,
    shadow_refreshes,
)
from autodistil.space import SubnetConfig
from conftest import randomize_
from test_superbert import _Watch

BF16 = torch.bfloat16
MEMBERS = [SubnetConfig(2, 48, 2.5, 3), SubnetConfig(1, 32, 2.0, 2), SubnetConfig(3, 64, 3.0, 4)]


def _loss(sb, cfg, ids, mask):
    o = sb(ids, mask, subnet=cfg, output_qkv=True, output_attentions=True)
    return (
        (o.last_hidden_state.float() * mask[..., None]).pow(2).mean()
        + o.qkv[-1][0].float().pow(2).mean()
        + o.attentions[-1].float().pow(2).mean()
        + o.pooler_output.float().sum() * 1e-2
    )


@pytest.mark.parametrize("opt", ["fused", "foreach", "forloop", "load_state_dict"])
def test_lowp_shadow_refreshes_after_a_real_optimizer_step(opt):
    lin = torch.nn.Linear(6, 8)
    s1 = lowp_shadow(lin.weight, BF16)
    assert s1.dtype == BF16 and s1.shape == lin.weight.shape and lowp_shadow(lin.weight, BF16) is s1  # cached
    if opt == "load_state_dict":
        lin.load_state_dict({"weight": torch.randn(8, 6), "bias": torch.randn(8)})
    else:
        kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[opt]
        o = torch.optim.AdamW(lin.parameters(), lr=0.1, **kw)
        lin(torch.randn(3, 6)).sum().backward()
        o.step()
    ptr = s1.data_ptr()
    s2 = lowp_shadow(lin.weight, BF16)
    # refreshed in place: the same tensor at the same address (CUDA graphs read it by address)
    assert s2 is s1 and s2.data_ptr() == ptr
    assert torch.equal(s2, lin.weight.detach().to(BF16))
    assert lowp_shadow(lin.weight, torch.float32) is lin.weight  # same dtype: the parameter itself


def test_refresh_lowp_shadows_writes_in_place_whatever_the_key():
    """The explicit refresh (what a CUDA-graph step runs before its replays) copies the current values
    into every cached shadow at its address, also after a write the key cannot see (.data), and
    records the keys: the next lookup is a hit, not a second refresh."""
    lin = torch.nn.Linear(6, 8)
    s1, b1 = lowp_shadow(lin.weight, BF16), lowp_shadow(lin.bias, BF16)
    ptrs = (s1.data_ptr(), b1.data_ptr())
    lin.weight.data.mul_(-2.0)
    lin.bias.data.add_(1.0)
    assert refresh_lowp_shadows(lin.parameters()) == 2
    assert (s1.data_ptr(), b1.data_ptr()) == ptrs
    assert torch.equal(s1, lin.weight.detach().to(BF16)) and torch.equal(b1, lin.bias.detach().to(BF16))
    n = shadow_refreshes()
    assert lowp_shadow(lin.weight, BF16) is s1 and shadow_refreshes() == n


def test_frozen_parameter_shadow_survives_optimizer_steps_elsewhere():
    """A frozen parameter without a gradient (a teacher's) cannot be stepped: another model's optimizer
    step does not refresh its shadow (which would cost a full copy per training step), an in-place
    write (version bump) still does."""
    frozen, lin = torch.nn.Linear(6, 8).requires_grad_(False), torch.nn.Linear(6, 8)
    s = lowp_shadow(frozen.weight, BF16)
    o = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.randn(3, 6)).sum().backward()
    o.step()
    n = shadow_refreshes()
    assert lowp_shadow(frozen.weight, BF16) is s and shadow_refreshes() == n
    with torch.no_grad():
        frozen.weight.mul_(2.0)
    assert torch.equal(lowp_shadow(frozen.weight, BF16), frozen.weight.to(BF16))
    assert shadow_refreshes() == n + 1


def test_data_writes_are_invisible_until_invalidated():
    """A write through .data bumps no version counter and takes no optimizer step: the cache keeps
    the old copy (the documented limitation) until invalidate_lowp_shadow drops it."""
    lin = torch.nn.Linear(6, 8)
    s1 = lowp_shadow(lin.weight, BF16)
    lin.weight.data.mul_(2.0)
    assert lowp_shadow(lin.weight, BF16) is s1
    invalidate_lowp_shadow([lin.weight])
    assert torch.equal(lowp_shadow(lin.weight, BF16), lin.weight.detach().to(BF16))


def test_no_shadow_for_zero3_or_marked_parameters():
    p = torch.nn.Parameter(torch.randn(4, 4))
    p.ds_id = 7  # a ZeRO-3 partition: callers cast the slice per call
    assert lowp_shadow(p, BF16) is None
    q = torch.nn.Parameter(torch.randn(4, 4))
    lowp_shadow(q, BF16)
    disable_lowp_shadow([q])  # storage rewritten through .data (DeepSpeed ZeRO-1/2)
    assert lowp_shadow(q, BF16) is None and lowp_shadow_bytes([q]) == 0
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=BF16):
        y = ops.sliced_linear(x, p, None, 3, 4)  # per-call slice cast still computes in bf16
    assert y.dtype == BF16
    torch.testing.assert_close(y.float(), x @ p.detach()[:3].t(), rtol=2e-2, atol=2e-2)


def test_autocast_never_copies_a_weight_slice_and_grads_stay_fp32(small_space):
    """Under bf16 autocast: after the first step each used weight has one bf16 shadow; a whole
    sandwich (forward + backward) then copies nothing from a parameter's storage; an optimizer
    step refreshes each shadow once (full size, never a slice). Gradients are fp32 and close to
    an fp32 run."""
    torch.manual_seed(0)
    sb = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=300)))
    ids = torch.randint(0, 300, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    params = list(sb.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)

    def sandwich(watch=False):
        sb.zero_grad(set_to_none=False)
        with _Watch(params) as w, torch.autocast("cpu", dtype=BF16):
            for cfg in MEMBERS:
                _loss(sb, cfg, ids, mask).backward()
        return w

    sandwich()
    first = {n: p.grad.clone() for n, p in sb.named_parameters()}
    w = sandwich()
    assert w.copies == [], w.copies[:5]
    linear = [m for m in sb.modules() if isinstance(m, torch.nn.Linear)]
    shadowed = [p for m in linear for p in (m.weight, m.bias)]
    assert lowp_shadow_bytes(params) == sum(p.numel() * 2 for p in shadowed)  # bf16: half the fp32 bytes
    assert all(p.grad.dtype == torch.float32 for p in params)
    for n, p in sb.named_parameters():
        torch.testing.assert_close(p.grad, first[n], msg=n)  # the shadow gives the same numbers each time
    opt.step()
    w = sandwich()
    full = {tuple(p.shape) for p in shadowed}
    # refreshed in place (copy_ into the existing shadow), never reallocated
    assert w.copies and all(name == "aten.copy_.default" and shape in full for name, shape in w.copies)
    assert len(w.copies) == len(shadowed)  # one refresh per parameter, shared by all members and dX

    ref = SuperBert(sb.config)
    ref.load_state_dict(sb.state_dict())
    for cfg in MEMBERS:
        _loss(ref, cfg, ids, mask).backward()
    scale = max(float(r.grad.abs().max()) for r in ref.parameters())
    for (n, p), (_, r) in zip(sb.named_parameters(), ref.named_parameters()):
        # bf16 activations: a few percent; key biases have a zero true gradient, hence the floor
        assert (p.grad - r.grad).abs().max() <= 5e-2 * r.grad.abs().max() + 1e-3 * scale, n


def test_layernorm_output_dtype_rule():
    """LN computes in fp32; its output has promote_types(x, residual): the residual stream stays fp32."""
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    x16, x32 = torch.randn(3, 12).to(BF16), torch.randn(3, 12)
    with torch.autocast("cpu", dtype=BF16):
        assert ops.sliced_layernorm(x16, w, b, 12, 1e-12, x32).dtype == torch.float32
        assert ops.sliced_layernorm(x16, w, b, 12, 1e-12).dtype == BF16
        y = ops.sliced_layernorm(x32, w, b, 12, 1e-12)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x32, (12,), w[:12], b[:12], 1e-12))


@pytest.mark.parametrize(
    "x_dt,p_dt",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("residual", [False, True])
def test_torch_layernorm_paths_match_f_layer_norm(x_dt, p_dt, residual):
    """The torch backend's LayerNorm (aten's fused kernels where the dtypes allow, plain ops for the
    rest: fp32 activations with bf16 gamma/beta) against F.layer_norm in fp32 on the slice: output,
    dx, d(residual), and dgamma/dbeta written into the .grad slices only."""
    g = torch.Generator().manual_seed(0)
    full, h = 40, 24
    w0, b0 = 1 + 0.1 * torch.randn(full, generator=g), 0.1 * torch.randn(full, generator=g)
    x0, r0, dy = (torch.randn(5, 3, h, generator=g) for _ in range(3))
    w, b = w0.to(p_dt).requires_grad_(), b0.to(p_dt).requires_grad_()
    x = x0.to(x_dt).requires_grad_()
    r = r0.to(x_dt).requires_grad_() if residual else None
    y = ops.sliced_layernorm(x, w, b, h, 1e-12, r, backend="torch")
    y.backward(dy.to(y.dtype))
    assert y.dtype == x_dt and y.shape == x.shape
    wr, br = w0.to(p_dt).float().requires_grad_(), b0.to(p_dt).float().requires_grad_()
    xr = x0.to(x_dt).float().requires_grad_()
    rr = r0.to(x_dt).float().requires_grad_() if residual else None
    yr = torch.nn.functional.layer_norm(xr + rr if residual else xr, (h,), wr[:h], br[:h], 1e-12)
    yr.backward(dy)
    tol = 1e-5 if x_dt == torch.float32 and p_dt == torch.float32 else 3e-2
    for name, got, ref in (
        ("y", y, yr),
        ("dx", x.grad, xr.grad),
        ("dgamma", w.grad, wr.grad),
        ("dbeta", b.grad, br.grad),
    ) + ((("dres", r.grad, rr.grad),) if residual else ()):
        err = (got.float() - ref.float()).abs().max().item()
        assert err <= tol * max(1.0, ref.abs().max().item()), f"{name}: max err {err:.3g} ({x_dt}, {p_dt})"
    assert w.grad.dtype == p_dt and not w.grad[h:].any() and not b.grad[h:].any()


def test_mm_fp32_out_probe_is_not_fooled_by_autocast(monkeypatch):
    """The probe for torch.mm(out_dtype=fp32) runs inside a backward re-entered under autocast: its
    fp32 reference product must be computed with autocast off (under bf16 autocast it came out in
    bf16, off by more than the tolerance, and the probe said no on every GPU trained that way). A
    stand-in mm with an exact fp32 result must be accepted under CPU bf16 autocast."""
    from autodistil.ops import torch_backend as tb

    def exact_mm(a, b, out_dtype=None):
        with torch.autocast("cpu", enabled=False):
            return (a.double() @ b.double()).to(out_dtype or a.dtype)

    monkeypatch.setattr(tb, "_MM_FP32_OUT", {})
    monkeypatch.setattr(torch, "mm", exact_mm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tb.mm_fp32_out_ok(torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(tb, "_MM_FP32_OUT", {})
    monkeypatch.setattr(torch, "mm", lambda a, b, out_dtype=None: (a.float() @ b.float()).to(a.dtype))
    assert not tb.mm_fp32_out_ok(torch.device("cpu"), torch.bfloat16)  # a low-precision result is refused


def test_mm_fp32_out_probe_does_not_keep_an_out_of_memory_answer(monkeypatch):
    """A probe that runs out of memory (a full GPU mid-backward) learns nothing about the kernel: that
    call takes the addmm_ path, and the next call probes again (the old code cached "no" for the rest
    of the process: every later dW in fp32 copies of the activations)."""
    from autodistil.ops import torch_backend as tb

    def oom(a, b, out_dtype=None):
        raise torch.OutOfMemoryError("stand-in: out of memory")

    def exact_mm(a, b, out_dtype=None):
        with torch.autocast("cpu", enabled=False):
            return (a.double() @ b.double()).to(out_dtype or a.dtype)

    monkeypatch.setattr(tb, "_MM_FP32_OUT", {})
    monkeypatch.setattr(torch, "mm", oom)
    assert not tb.mm_fp32_out_ok(torch.device("cpu"), torch.bfloat16)
    assert (("cpu", torch.bfloat16)) not in tb._MM_FP32_OUT
    monkeypatch.setattr(torch, "mm", exact_mm)
    assert tb.mm_fp32_out_ok(torch.device("cpu"), torch.bfloat16)
    assert tb._MM_FP32_OUT[("cpu", torch.bfloat16)] is True
