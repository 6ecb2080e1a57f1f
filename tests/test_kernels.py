"""Kernel backends (triton, cuda) against PyTorch references, one suite for both: Triton runs
on the CPU interpreter in CI (and on a GPU when present); CUDA needs a GPU and skips without."""
import math

import pytest
import torch
import torch.nn.functional as F

from autodistil import ops

DEV = "cuda" if torch.cuda.is_available() else "cpu"
STATUS = ops.backend_status()


@pytest.fixture(params=["triton", "cuda"])
def backend(request):
    if STATUS[request.param] != "ok":
        pytest.skip(STATUS[request.param])
    return request.param
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _check(got, ref32, ref_lowp, dtype, name):
    """fp32: tight; fp16/bf16: max-abs error vs an fp32 reference <= 2x torch's own in that dtype + floor."""
    if dtype == torch.float32:
        torch.testing.assert_close(got.float(), ref32.float(), rtol=1e-5, atol=1e-5, msg=name)
        return
    ours = (got.float() - ref32.float()).abs().max().item()
    theirs = (ref_lowp.float() - ref32.float()).abs().max().item()
    assert ours <= 2 * theirs + FLOOR[dtype], f"{name}: {ours} vs torch {theirs}"


def _mk(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(DEV, dtype)


DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,o,i", [(1, 100, 37), (7, 33, 50), (129, 100, 37)])
@pytest.mark.parametrize("act,has_bias", [(None, True), ("gelu", True), (None, False)])
def test_sliced_linear(backend, dtype, n, o, i, act, has_bias):
    W_full, b_full = _mk((128, 64), torch.float32, 1, 0.1), _mk((128,), torch.float32, 2, 0.1)
    x32 = _mk((n, i), torch.float32, 3)
    dy32 = _mk((n, o), torch.float32, 4)

    def run(impl, dt):
        W = W_full.to(dt).clone().requires_grad_()
        b = b_full.to(dt).clone().requires_grad_() if has_bias else None
        x = x32.to(dt).clone().requires_grad_()
        if impl == "ref":
            y = F.linear(x, W[:o, :i], None if b is None else b[:o])
            y = F.gelu(y) if act else y
        else:
            y = ops.sliced_linear(x, W, b, o, i, act, backend=backend)
        y.backward(dy32.to(dt))
        return y, x.grad, W.grad, None if b is None else b.grad

    got = run("kernel", dtype)
    ref32 = run("ref", torch.float32)
    ref_lp = run("ref", dtype) if dtype != torch.float32 else ref32
    for name, g, r, rl in zip(("y", "dx", "dW", "db"), got, ref32, ref_lp):
        if r is not None:
            _check(g, r, rl, dtype, name)
    assert got[2].shape == W_full.shape and not got[2][o:].any() and not got[2][:, i:].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,h", [(1, 37), (7, 100), (129, 37)])
@pytest.mark.parametrize("residual", [True, False])
def test_sliced_layernorm(backend, dtype, n, h, residual):
    w_full = (1 + 0.1 * _mk((128,), torch.float32, 5))
    b_full = 0.1 * _mk((128,), torch.float32, 6)
    x32, r32, dy32 = _mk((n, h), torch.float32, 7), _mk((n, h), torch.float32, 8), _mk((n, h), torch.float32, 9)

    def run(impl, dt):
        w, b = w_full.to(dt).clone().requires_grad_(), b_full.to(dt).clone().requires_grad_()
        x = x32.to(dt).clone().requires_grad_()
        r = r32.to(dt).clone().requires_grad_() if residual else None
        if impl == "ref":
            y = F.layer_norm(x + r if residual else x, (h,), w[:h], b[:h], 1e-12)
        else:
            y = ops.sliced_layernorm(x, w, b, h, 1e-12, r, backend=backend)
        y.backward(dy32.to(dt))
        return y, x.grad, w.grad, b.grad, (r.grad if residual else None)

    got, ref32 = run("kernel", dtype), run("ref", torch.float32)
    ref_lp = run("ref", dtype) if dtype != torch.float32 else ref32
    for name, g, r, rl in zip(("y", "dx", "dgamma", "dbeta", "dres"), got, ref32, ref_lp):
        if r is not None:
            _check(g, r, rl, dtype, name)


def _ref_attn(q, k, v, mask):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    p = torch.softmax(s.float(), -1).to(q.dtype)
    return p @ v, p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 7, 129])
@pytest.mark.parametrize("d", [32, 24])
def test_attention(backend, dtype, T, d):
    B, A = 2, 3
    mask = torch.ones(B, T, dtype=torch.long, device=DEV)
    mask[1, max(1, T - 3):] = 0  # padding in the second sequence
    qkv32 = [_mk((B, T, A * d), torch.float32, s) for s in (10, 11, 12)]
    do32 = _mk((B, A, T, d), torch.float32, 13)

    def run(impl, dt):
        # the model's head-split views: (B, T, A*d) -> (B, A, T, d), strided, not copied
        leaves = [t.to(dt).clone().requires_grad_() for t in qkv32]
        q, k, v = (t.view(B, T, A, d).transpose(1, 2) for t in leaves)
        if impl == "ref":
            o, p = _ref_attn(q, k, v, mask)
        else:
            o, p = ops.sliced_attention(q, k, v, mask, need_probs=False, backend=backend)
        o.backward(do32.to(dt))
        return (o, *[t.grad for t in leaves])

    got, ref32 = run("kernel", dtype), run("ref", torch.float32)
    ref_lp = run("ref", dtype) if dtype != torch.float32 else ref32
    valid = mask.bool()[:, None, :, None]
    for name, g, r, rl in zip(("o", "dq", "dk", "dv"), got, ref32, ref_lp):
        if name == "o":
            g, r, rl = g * valid, r * valid, rl * valid
        _check(g, r, rl, dtype, name)


def test_attention_probs_without_grad(backend):
    B, A, T, d = 1, 2, 9, 32
    q, k, v = (_mk((B, A, T, d), torch.float32, s) for s in (1, 2, 3))
    mask = torch.ones(B, T, dtype=torch.long, device=DEV)
    mask[0, 6:] = 0
    with torch.no_grad():
        o, p = ops.sliced_attention(q, k, v, mask, need_probs=True, backend=backend)
        ro, rp = _ref_attn(q, k, v, mask)
    torch.testing.assert_close(p, rp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o, ro, rtol=1e-5, atol=1e-5)


def test_superbert_backend_matches_torch(backend, small_space):
    from autodistil.nn import SuperBert, SuperBertConfig
    from autodistil.space import SubnetConfig
    from conftest import randomize_
    torch.manual_seed(0)
    base = randomize_(SuperBert(SuperBertConfig.for_spaces(small_space, vocab_size=300)))
    ids = torch.randint(0, 300, (2, 9), device=DEV)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    for cfg in (SubnetConfig(2, 48, 2.5, 3), SubnetConfig(1, 32, 2.0, 2), SubnetConfig(3, 64, 3.0, 4)):
        res = {}
        for impl in ("torch", backend):
            m = SuperBert(base.config, backend=impl).to(DEV)
            m.load_state_dict(base.state_dict())
            out = m(ids, mask, subnet=cfg, output_qkv=True)
            loss = (out.last_hidden_state * mask[..., None]).pow(2).mean() + out.qkv[-1][0].sum() * 1e-3
            loss.backward()
            res[impl] = (loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        torch.testing.assert_close(res[backend][0], res["torch"][0], rtol=1e-5, atol=1e-6)
        assert set(res[backend][1]) == set(res["torch"][1])
        for n, g in res["torch"][1].items():
            torch.testing.assert_close(res[backend][1][n], g, rtol=1e-4, atol=1e-5, msg=f"{cfg.short()} {n}")


@pytest.mark.gpu
@pytest.mark.parametrize("n,o,i", [(4096, 2560, 640), (4096, 896, 224)])
def test_sliced_linear_bf16_large_gpu(backend, n, o, i):
    W = _mk((3072, 768), torch.bfloat16, 1, 0.02).requires_grad_()
    x = _mk((n, i), torch.bfloat16, 2).requires_grad_()
    y = ops.sliced_linear(x, W, None, o, i, "gelu", backend=backend)
    ref32 = F.gelu(F.linear(x.float(), W.float()[:o, :i]))
    ref16 = F.gelu(F.linear(x, W[:o, :i]))
    _check(y, ref32, ref16, torch.bfloat16, "y")


def test_kernels_take_the_full_parameter_and_never_copy_it(backend, small_space):
    """A sliced op reads the parameter in place: no slice of it is ever copied. (Triton's CPU
    interpreter mirrors each argument's whole storage to host memory as a flat byte buffer,
    its emulation of device memory: that is not a slice copy and is told apart by its shape.)"""
    from test_superbert import _Watch
    W = _mk((128, 64), torch.float32, 1).requires_grad_()
    x = _mk((7, 37), torch.float32, 2)
    with _Watch([W]) as w:
        y = ops.sliced_linear(x, W, None, 100, 37, "gelu", backend=backend)
        y.sum().backward()
    slice_copies = [c for c in w.copies if len(c[1]) == 2]
    assert slice_copies == [] and W.grad.shape == W.shape
    if backend == "triton" and not torch.cuda.is_available():
        assert all(c[1] == (W.numel() * W.element_size(),) for c in w.copies)  # interpreter mirrors only


def test_cuda_extension_builds_and_imports_without_gpu():
    """CI compiles csrc/ with nvcc (setup.py -> CMake); importing never needs a GPU."""
    import shutil
    if shutil.which("nvcc") is None and not __import__("os").path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("no nvcc on this machine: the extension is skipped by design")
    from autodistil import _C
    assert _C.cuda_runtime_version() > 0
    if not torch.cuda.is_available():
        assert _C.device_count() == 0
        assert "no CUDA GPU is visible" in STATUS["cuda"]


def test_gpu_benchmark_reports_not_measured_without_gpu(capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    import bench_kernels
    shapes = bench_kernels.linear_shapes()
    assert ("tiny-qkv", 7 * 64, 128) in shapes and ("base-ffn-in", 2560, 640) in shapes
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run the benchmark itself")
    assert bench_kernels.main([]) == 2
    assert "not measured" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["inplace", "autograd"])
def test_grad_modes_deliver_the_same_gradients(backend, mode):
    """Under DDP / ZeRO ("autograd" mode) the kernels return full-size gradients through autograd,
    so the reduction hooks fire; in "inplace" mode they write the grad slices directly. Both must
    equal the reference."""
    from autodistil.ops.shared import grad_mode_ctx
    W0, b0 = _mk((64, 48), torch.float32, 1, 0.1), _mk((64,), torch.float32, 2, 0.1)
    x = _mk((9, 37), torch.float32, 3)
    hooked = []
    W, b = W0.clone().requires_grad_(), b0.clone().requires_grad_()
    W.register_post_accumulate_grad_hook(lambda p: hooked.append(p.grad.clone()))
    with grad_mode_ctx(mode):
        ops.sliced_linear(x, W, b, 50, 37, "gelu", backend=backend).pow(2).sum().backward()
    Wr, br = W0.clone().requires_grad_(), b0.clone().requires_grad_()
    F.gelu(F.linear(x, Wr[:50, :37], br[:50])).pow(2).sum().backward()
    torch.testing.assert_close(W.grad, Wr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, br.grad, rtol=1e-5, atol=1e-6)
    if mode == "autograd":  # what DDP / ZeRO reduce: the hook sees the complete gradient
        assert len(hooked) == 1
        torch.testing.assert_close(hooked[0], Wr.grad, rtol=1e-5, atol=1e-6)
