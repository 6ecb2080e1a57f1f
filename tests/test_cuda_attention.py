"""Attention in the CUDA backend (autodistil.ops.cuda_backend.attention): the Triton flash kernel when
the Triton backend can run, else SDPA with the contract's extras (cuda_backend.sdpa_attention).

CPU part (the routing itself runs on CPU tensors: the Triton kernel under TRITON_INTERPRET=1, SDPA
as is): both routes match an fp32 reference on head-split views with padding, give 0 output and
zero gradients for an all-padding sequence, and a bit-identical backward on two calls; the SDPA
route takes the math backend under torch.use_deterministic_algorithms(True); the extension imports
without a GPU and has no attention kernel of its own.
GPU part (@pytest.mark.gpu): the same through ops.sliced_attention(backend="cuda") in fp32 / fp16 /
bf16 against an fp32 reference (errors at most 2x torch's own in that dtype plus a floor), on odd
sequence lengths, probabilities without gradient, and both routes."""

import math
import subprocess
import sys

import pytest
import torch

from autodistil import ops
from autodistil.ops import cuda_backend as cb

TRITON = ops.backend_status()["triton"] == "ok"
CUDA = ops.backend_status()["cuda"] == "ok"


def _ref(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v in q's dtype for the products (fp32 softmax); masked keys get
    probability 0 and a row with no valid key gives 0 (not uniform weights)."""
    s = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p.to(q.dtype) @ v, p


def _leaves(B, A, T, d, seed, dtype, dev):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, A * d, generator=g).to(dev, dtype).requires_grad_() for _ in range(3)]


def _run(fn, leaves, do, mask, B, A, T, d):
    """fn(q, k, v, mask) -> o on the model's head-split views (B, A, T, d) of (B, T, A*d) leaves;
    returns o and the leaves' gradients for the output gradient `do`."""
    for t in leaves:
        t.grad = None
    q, k, v = (t.view(B, T, A, d).transpose(1, 2) for t in leaves)
    o = fn(q, k, v, mask)
    o.backward(do)
    return [o.detach(), *[t.grad.clone() for t in leaves]]


def _mask(B, T, dev, all_pad=1):
    m = torch.ones(B, T, dtype=torch.long, device=dev)
    m[0, T - max(1, T // 3) :] = 0  # sequence 0: trailing padding
    if all_pad is not None:
        m[all_pad] = 0  # an all-padding sequence
    return m


def _routes(monkeypatch, route):
    if route == "triton":
        if not TRITON:
            pytest.skip(ops.backend_status()["triton"])
    else:
        monkeypatch.setattr(cb, "_triton_attention", lambda: None)


# --------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("route", ["triton", "sdpa"])
def test_cuda_backend_attention_contract_on_cpu(monkeypatch, route):
    _routes(monkeypatch, route)
    B, A, T, d = 3, 2, 7, 16
    mask = _mask(B, T, "cpu")
    leaves = _leaves(B, A, T, d, 1, torch.float32, "cpu")
    do = torch.randn(B, A, T, d, generator=torch.Generator().manual_seed(2))
    ours = lambda q, k, v, m: cb.attention(q, k, v, m, False)[0]  # noqa: E731
    got = _run(ours, leaves, do, mask, B, A, T, d)
    again = _run(ours, leaves, do, mask, B, A, T, d)
    ref = _run(lambda q, k, v, m: _ref(q, k, v, m)[0], leaves, do, mask, B, A, T, d)
    for n, g, r, g2 in zip(("o", "dq", "dk", "dv"), got, ref, again):
        assert torch.isfinite(g).all(), f"{route} {n} has NaN/inf"
        assert torch.equal(g, g2), f"{route} {n} differs between two identical calls"
        # o: (B, A, T, d); grads: leaves (B, T, A*d): batch entry 1 is the all-padding sequence
        assert (g[1] == 0).all(), f"{route} {n} of the all-padding sequence is not 0"
        err = (g[[0, 2]] - r[[0, 2]]).abs().max().item()
        assert err <= 1e-5, f"{route} {n}: max err {err:.2e} vs the fp32 reference"
    with torch.no_grad():
        q, k, v = (t.view(B, T, A, d).transpose(1, 2) for t in leaves)
        o, p = cb.attention(q, k, v, mask, True)
    assert p.shape == (B, A, T, T) and (p[1] == 0).all() and (p[0, :, :, T - T // 3 :] == 0).all()
    torch.testing.assert_close(p[[0, 2]], _ref(q, k, v, mask)[1][[0, 2]], atol=1e-6, rtol=1e-5)


def test_cuda_backend_takes_the_triton_kernel_when_triton_runs(monkeypatch):
    if not TRITON:
        pytest.skip(ops.backend_status()["triton"])
    seen = []
    tri = ops.backend_module("triton")
    monkeypatch.setattr(tri, "attention", lambda *a: seen.append(a) or ("o", None))
    assert cb.attention(*(torch.zeros(1, 1, 2, 4),) * 3, None, False) == ("o", None) and len(seen) == 1


def test_sdpa_route_is_deterministic_when_asked(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the SDPA route runs the math backend (no
    atomics in its backward); otherwise PyTorch picks."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(cb, "_triton_attention", lambda: None)
    q = torch.randn(2, 2, 5, 8)
    mask = _mask(2, 5, "cpu", all_pad=None)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with Ops() as rec:
            cb.attention(q, q, q, mask, False)
    finally:
        torch.use_deterministic_algorithms(was)
    # the math backend decomposes into plain ops (two bmm); the CPU's fused kernel is one op
    fused = "_scaled_dot_product_flash_attention_for_cpu"
    assert fused not in rec.names and rec.names.count("bmm") == 2, rec.names
    with Ops() as rec:
        cb.attention(q, q, q, mask, False)
    assert fused in rec.names, rec.names


def test_extension_imports_without_gpu_and_has_no_attention_kernel():
    code = (
        "import sys; import autodistil.ops.cuda_backend as cb; "
        "from autodistil import _C; print(_C.device_count(), hasattr(_C, 'attention_forward'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
    )
    if "No module named 'autodistil._C'" in out.stderr:
        pytest.skip("autodistil._C is not built")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False"], f"stale build of autodistil._C? {out.stdout}"


# --------------------------------------------------------------------------------------- GPU
DEV = "cuda"
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _compare(got, ref32, ref_lp, dtype, tag):
    for n, g, r, rl in zip(("o", "dq", "dk", "dv"), got, ref32, ref_lp):
        assert torch.isfinite(g).all(), f"{tag} {n} not finite"
        err = (g.float() - r.float()).abs().max().item()
        if dtype == torch.float32:
            tol = 1e-5 + 1e-5 * r.abs().max().item()
        else:
            tol = 2 * (rl.float() - r.float()).abs().max().item() + FLOOR[dtype]
        assert err <= tol, f"{tag} {n}: max err {err:.3e} > {tol:.3e}"


def _gpu_case(route, monkeypatch, dtype, T, d, B=3, A=3):
    _routes(monkeypatch, route)
    mask = _mask(B, T, DEV)
    g = torch.Generator().manual_seed(7)
    do = torch.randn(B, A, T, d, generator=g).to(DEV)
    base = _leaves(B, A, T, d, 3, torch.float32, DEV)

    def leaves(dt):
        return [t.detach().to(dt).requires_grad_() for t in base]

    ours = lambda q, k, v, m: ops.sliced_attention(q, k, v, m, backend="cuda")[0]  # noqa: E731
    ref = lambda q, k, v, m: _ref(q, k, v, m)[0]  # noqa: E731
    got = _run(ours, leaves(dtype), do.to(dtype), mask, B, A, T, d)
    ref32 = _run(ref, leaves(torch.float32), do, mask, B, A, T, d)
    ref_lp = _run(ref, leaves(dtype), do.to(dtype), mask, B, A, T, d) if dtype != torch.float32 else ref32
    keep = [0, 2]
    _compare(
        [x[keep] for x in got],
        [x[keep] for x in ref32],
        [x[keep] for x in ref_lp],
        dtype,
        f"{route} {dtype} T={T} d={d}",
    )
    assert all((x[1] == 0).all() for x in got), "the all-padding sequence must give 0 output and gradients"
    again = _run(ours, leaves(dtype), do.to(dtype), mask, B, A, T, d)
    return got, again


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="cuda backend unavailable")
@pytest.mark.parametrize("route", ["triton", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("T,d", [(1, 64), (7, 32), (128, 64), (129, 64), (70, 16)])
def test_gpu_matches_fp32_reference(monkeypatch, route, dtype, T, d):
    got, again = _gpu_case(route, monkeypatch, dtype, T, d)
    if route == "triton":  # no atomics: the same bits on a second call
        assert all(torch.equal(a, b) for a, b in zip(got, again))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="cuda backend unavailable")
def test_gpu_sdpa_route_is_bit_identical_when_determinism_is_asked(monkeypatch):
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        got, again = _gpu_case("sdpa", monkeypatch, torch.bfloat16, 129, 64)
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(a, b) for a, b in zip(got, again))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="cuda backend unavailable")
@pytest.mark.parametrize("route", ["triton", "sdpa"])
def test_gpu_probs_without_gradient(monkeypatch, route):
    _routes(monkeypatch, route)
    B, A, T, d = 2, 3, 77, 64
    mask = _mask(B, T, DEV, all_pad=None)
    q, k, v = (
        t.detach().to(torch.bfloat16).view(B, T, A, d).transpose(1, 2)
        for t in _leaves(B, A, T, d, 5, torch.float32, DEV)
    )
    with torch.no_grad():
        _, p = ops.sliced_attention(q, k, v, mask, need_probs=True, backend="cuda")
        rp = _ref(q.float(), k.float(), v.float(), mask)[1]
    assert p.shape == (B, A, T, T) and not p.requires_grad
    assert (p.float() - rp).abs().max().item() <= 8e-3
