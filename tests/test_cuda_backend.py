"""The CUDA backend's own pieces: the build (cublasLt.h found, imports without a GPU), why it cannot
run, boundary checks (before any launch, so they run on CPU too), and on a GPU the cuBLASLt GEMMs
(fp32 exact, bf16 from fp32 masters, beta = 1 accumulation into a strided fp32 slice, plan-cache
reuse, bit-identical gradients), the exact-GELU epilogue and the mixed-precision LayerNorm.
The generic kernel suite (tests/test_kernels.py) runs on backend="cuda" as well."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

_C = pytest.importorskip("autodistil._C", reason="the CUDA extension is not built on this machine (no nvcc)")
from autodistil import ops  # noqa: E402
from autodistil.ops import cuda_backend as cb  # noqa: E402

STATUS = ops.backend_status()["cuda"]
GPU = pytest.mark.skipif(STATUS != "ok", reason=f"cuda backend: {STATUS}")


def _wheel_dir(sub):
    spec = importlib.util.find_spec("nvidia")
    for p in (spec.submodule_search_locations or []) if spec else []:
        d = Path(p) / "cu13" / sub
        if d.is_dir():
            return d
    return None


# --- CPU: build, availability, boundary checks -----------------------------------------------
def test_build_found_cublaslt_header_when_the_wheel_is_installed():
    info = _C.build_info()
    print("build_info:", info)
    inc = _wheel_dir("include")
    if inc is None or not (inc / "cublasLt.h").is_file():
        if os.environ.get("AUTODISTIL_CUBLAS_ROOT") is None:
            pytest.skip("no nvidia-cublas wheel here: the build has no cublasLt.h by design")
    assert info["has_cublaslt"], (
        "setup.py/CMake did not find cublasLt.h although the nvidia-cublas wheel is installed"
    )
    assert info["cublaslt_soname"] == f"libcublasLt.so.{info['cublaslt_header_version'] // 10000}"


def test_backend_says_why_it_cannot_run():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert cb.unavailable_reason() == "the CUDA extension is built but no CUDA GPU is visible"
    assert "no CUDA GPU is visible" in STATUS


def _run_py(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_cublaslt_loader_names_the_missing_library_and_the_fix():
    """A fresh process (nothing loaded yet) given only a bogus path: the error says which soname,
    where it looked and what to install."""
    if not _C.has_cublaslt():
        pytest.skip("built without cublasLt.h")
    rc, out = _run_py(
        "import autodistil._C as C\n"
        "try:\n    C.cublaslt_load(['/nonexistent/dir/libcublasLt.so.13'], False)\n"
        "except RuntimeError as e:\n    print('ERR', e)\n"
    )
    assert rc == 0, out
    assert "ERR libcublasLt.so.13 not found" in out and "pip install nvidia-cublas" in out, out
    assert "/nonexistent/dir/libcublasLt.so.13" in out, out


def test_cublaslt_resolves_from_the_wheel_without_a_gpu():
    """dlopen of the wheel's libcublasLt.so.13 needs no driver: the loader finds it, and its major
    version is the header's."""
    if not _C.has_cublaslt():
        pytest.skip("built without cublasLt.h")
    lib = _wheel_dir("lib")
    if lib is None or not (lib / "libcublasLt.so.13").is_file():
        pytest.skip("no nvidia-cublas wheel library here")
    rc, out = _run_py(
        "import autodistil._C as C\nfrom autodistil.ops import cuda_backend as cb\n"
        "print('PATH', cb.load_cublaslt())\nprint('VER', C.cublaslt_runtime_version())\n"
    )
    assert rc == 0, out
    assert "libcublasLt.so.13" in out.split("PATH", 1)[1].splitlines()[0], out
    ver = int(out.split("VER", 1)[1].split()[0])
    assert ver // 10000 == _C.build_info()["cublaslt_header_version"] // 10000, out


def test_launcher_checks_name_the_tensor():
    x, w, b = torch.randn(3, 8), torch.randn(16, 8), torch.randn(16)
    with pytest.raises(ValueError, match=r"cuda sliced_linear: x is on cpu; it must be a CUDA tensor"):
        cb._CudaLinear.check(x, w, b)
    with pytest.raises(ValueError, match=r"cuda sliced_linear: weight has dtype torch.int64"):
        cb._CudaLinear.check(x, w.long(), b)
    with pytest.raises(ValueError, match=r"cuda sliced_linear: bias must be a 1-D tensor with unit stride"):
        cb._CudaLinear.check(x, w, torch.randn(32)[::2])
    with pytest.raises(ValueError, match=r"cuda sliced_layernorm: residual has dtype torch.int32"):
        cb._CudaLayerNorm.check(x, torch.ones(8), torch.zeros(8), torch.ones(3, 8, dtype=torch.int32))
    with pytest.raises(
        ValueError, match=r"cuda sliced_layernorm: weight must be a 1-D tensor with unit stride"
    ):
        cb._CudaLayerNorm.check(x, torch.ones(16)[::2], torch.zeros(8), None)


def test_extension_checks_raise_value_error_before_any_launch():
    """The C++ boundary (pybind11 turns std::invalid_argument into ValueError) rejects bad codes,
    leading dimensions and sizes before touching a device."""
    with pytest.raises(ValueError, match=r"gemm_forward: x: dtype code 5 is not allowed"):
        _C.gemm_forward(5, 16, 16, 8, 0, 16, 4, 8, 8, 0, 0, 0)
    with pytest.raises(ValueError, match=r"gemm_forward: weight row stride 4 < in_features 8"):
        _C.gemm_forward(0, 16, 16, 4, 0, 16, 4, 8, 8, 0, 0, 0)
    with pytest.raises(ValueError, match=r"gemm_dw: dst dtype bf16 is not allowed with fp16 activations"):
        _C.gemm_dw(1, 2, 16, 16, 16, 8, 4, 8, 8, 0, 0, 0)
    with pytest.raises(ValueError, match=r"gemm_dw: dst row stride 3 < in_features 8"):
        _C.gemm_dw(2, 0, 16, 16, 16, 3, 4, 8, 8, 0, 0, 0)
    with pytest.raises(ValueError, match=r"layernorm_forward: width 20000 exceeds the maximum"):
        _C.layernorm_forward(2, 0, 16, 0, 0, 16, 16, 16, 16, 16, 4, 20000, 1e-12, 0)
    with pytest.raises(ValueError, match=r"layernorm_forward: weight: dtype fp16 is not allowed with bf16"):
        _C.layernorm_forward(2, 1, 16, 0, 0, 16, 16, 16, 16, 16, 4, 64, 1e-12, 0)
    with pytest.raises(ValueError, match=r"layernorm_backward: rows must be layernorm_backward_rows"):
        _C.layernorm_backward(0, 0, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 4096, 64, 1, 0)
    assert _C.layernorm_backward_rows(100) == 1 and _C.layernorm_backward_rows(4096) == 8


# --- GPU: cuBLASLt GEMMs, GELU, LayerNorm ----------------------------------------------------
def _rand(shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to("cuda", dtype)


def _report(name, got, ref):
    err = (got.double() - ref.double()).abs()
    print(
        f"{name}: max abs err {err.max().item():.3e} (ref max {ref.abs().max().item():.3e}), "
        f"shape {tuple(got.shape)}"
    )
    return err.max().item()


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("n,o,i", [(1, 37, 29), (129, 100, 37), (256, 96, 80)])
def test_gemms_fp32_match_torch(n, o, i):
    """fp32: cuBLASLt with CUBLAS_COMPUTE_32F (no TF32) holds 1e-5 against torch in fp32."""
    W, b = _rand((128, 96), seed=1, scale=0.1), _rand((128,), seed=2)
    x, dy = _rand((n, i), seed=3), _rand((n, o), seed=4)
    y, pre = cb._CudaLinear.forward(x, W, b, o, i, 0)
    assert pre is None
    ref = F.linear(x, W[:o, :i], b[:o])
    _report("y fp32", y, ref)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    dx = cb._CudaLinear.dx(dy, W, o, i)
    _report("dx fp32", dx, dy @ W[:o, :i])
    torch.testing.assert_close(dx, dy @ W[:o, :i], rtol=1e-5, atol=1e-5)
    dst = _rand((128, 96), seed=5)
    before = dst.clone()
    cb._CudaLinear.accumulate_dw(dy, x, dst, o, i)
    ref_dw = before[:o, :i] + dy.T @ x
    _report("dW fp32", dst[:o, :i], ref_dw)
    torch.testing.assert_close(dst[:o, :i], ref_dw, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("n,o,i", [(7, 33, 50), (129, 100, 37), (1024, 768, 256)])
def test_gemm_bf16_from_fp32_master_matches_torch_autocast(n, o, i, act):
    """bf16 activations with an fp32 master weight and bias (the shadow path): y and pre against
    torch's own bf16 F.linear (+ erf GELU) and an fp32 reference; error <= 2x torch's + floor."""
    W, b = _rand((1024, 320), seed=1, scale=0.05), _rand((1024,), seed=2, scale=0.1)
    x = _rand((n, i), torch.bfloat16, seed=3)
    y, pre = cb._CudaLinear.forward(x, W, b, o, i, act)
    assert y.dtype == torch.bfloat16 and (pre is not None) == bool(act)
    lin32 = F.linear(x.float(), W[:o, :i].bfloat16().float(), b[:o].bfloat16().float())
    ref32 = F.gelu(lin32) if act else lin32
    lin16 = F.linear(x, W[:o, :i].bfloat16(), b[:o].bfloat16())
    ref16 = F.gelu(lin16) if act else lin16
    ours, theirs = _report("y bf16", y, ref32), _report("torch bf16", ref16, ref32)
    assert ours <= 2 * theirs + 1e-2, f"y: ours {ours} vs torch {theirs}"
    if act:  # the pre-activation is the bias-epilogue GEMM output; y = gelu(pre) exactly (erf, fp32 math)
        assert _report("pre bf16", pre, lin32) <= 2 * (lin16.float() - lin32).abs().max().item() + 1e-2
        torch.testing.assert_close(y.float(), F.gelu(pre.float()).bfloat16().float(), rtol=2**-8, atol=1e-6)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dw_accumulates_into_strided_fp32_slice_and_nothing_else(dtype):
    """dst[:o, :i] += dy^T x with beta = 1 from bf16/fp16 inputs, into an fp32 gradient whose row
    stride is larger than its width: the slice gets exactly the fp32 sum, every other element
    (outside [:o, :i] and the padding between rows) keeps its bits."""
    n, o, i = 300, 77, 45
    big = _rand((96, 70), seed=7)  # the storage; dst is a (96, 64) view with row stride 70
    dst = big[:, :64]
    before = big.clone()
    dy, x = _rand((n, o), dtype, seed=8), _rand((n, i), dtype, seed=9)
    cb._CudaLinear.accumulate_dw(dy, x, dst, o, i)
    ref = before[:o, :i].double() + dy.double().T @ x.double()
    err = _report(f"dW {dtype} -> fp32", big[:o, :i], ref)
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), err
    outside = torch.ones_like(big, dtype=torch.bool)
    outside[:o, :i] = False
    changed = (big != before) & outside
    assert not changed.any(), (
        f"{int(changed.sum())} elements outside the slice changed, e.g. at {changed.nonzero()[:5].tolist()}"
    )


@pytest.mark.gpu
@GPU
def test_plan_cache_reused_across_shapes_and_bias_pointers():
    """Plans are cached per shape/dtype/alignment key: A, B, A misses twice and hits once, and the
    hit still uses the bias passed at that call (the pointer is set on the cached descriptor)."""
    _C.gemm_cache_clear()
    W = _rand((128, 128), seed=1)
    xa, xb = _rand((64, 96), seed=2), _rand((32, 48), seed=3)
    b1, b2 = _rand((128,), seed=4), _rand((128,), seed=5)
    ya, _ = cb._CudaLinear.forward(xa, W, b1, 80, 96, 0)
    yb, _ = cb._CudaLinear.forward(xb, W, b1, 40, 48, 0)
    ya2, _ = cb._CudaLinear.forward(xa, W, b2, 80, 96, 0)
    stats = _C.gemm_cache_stats()
    print("plan cache:", stats)
    assert stats == {"plans": 2, "hits": 1, "misses": 2}, stats
    torch.testing.assert_close(ya, F.linear(xa, W[:80, :96], b1[:80]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yb, F.linear(xb, W[:40, :48], b1[:40]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ya2, F.linear(xa, W[:80, :96], b2[:80]), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@GPU
def test_gemm_with_unaligned_operands():
    """x starting 2 bytes past an aligned address (a view) and odd leading dimensions: the
    heuristic is asked with the real alignments and still returns the right product."""
    W = _rand((64, 40), torch.bfloat16, seed=1)
    base = _rand((1 + 9 * 37,), torch.bfloat16, seed=2)
    x = base[1:].view(9, 37)
    assert x.data_ptr() % 16 != 0
    y, _ = cb._CudaLinear.forward(x, W, None, 33, 37, 0)
    ref32 = F.linear(x.float(), W[:33, :37].float())
    assert (
        _report("y unaligned", y, ref32)
        <= 2 * (F.linear(x, W[:33, :37]).float() - ref32).abs().max().item() + 1e-2
    )


@pytest.mark.gpu
@GPU
def test_autocast_end_to_end_and_shadow_refresh():
    """Under bf16 autocast with fp32 parameters: y is bf16, dW/db land in the fp32 grads, the
    shadow holds 2 bytes per element, and an in-place update of W is seen by the next call."""
    from autodistil.ops.shared import lowp_shadow_bytes

    W = _rand((256, 192), seed=1, scale=0.05).requires_grad_()
    b = _rand((256,), seed=2, scale=0.1).requires_grad_()
    x = _rand((4, 33, 150), seed=3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = ops.sliced_linear(x, W, b, 200, 150, "gelu", backend="cuda")
        assert y.dtype == torch.bfloat16
        y.float().pow(2).mean().backward()
    Wr, br = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yr = F.gelu(F.linear(x, Wr[:200, :150], br[:200]))
        yr.float().pow(2).mean().backward()
    assert W.grad.dtype == torch.float32 and not W.grad[200:].any() and not W.grad[:, 150:].any()
    for name, g, r in (("y", y, yr), ("dW", W.grad, Wr.grad), ("db", b.grad, br.grad)):
        err = _report(f"autocast {name}", g.float(), r.float())
        assert err <= 2e-2 * max(1.0, r.float().abs().max().item()), f"{name}: {err}"
    print("shadow bytes:", lowp_shadow_bytes([W, b]))
    assert lowp_shadow_bytes([W, b]) == (W.numel() + b.numel()) * 2
    with torch.no_grad():
        W.mul_(-1.0)  # an optimizer step bumps _version: the next call must not read a stale shadow
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y2 = ops.sliced_linear(x, W, b, 200, 150, None, backend="cuda")
            y2r = F.linear(x, W[:200, :150], b[:200])
    _report("after update", y2.float(), y2r.float())
    assert (y2.float() - y2r.float()).abs().max().item() <= 2e-2 * max(1.0, y2r.float().abs().max().item())


@pytest.mark.gpu
@GPU
def test_gradients_bit_identical_on_two_identical_runs():
    """cuBLASLt (fixed plan per shape) and the LayerNorm's fixed-order dgamma/dbeta reduction: two
    identical backward passes give the same bits."""

    def run():
        W = _rand((512, 384), seed=1, scale=0.05).requires_grad_()
        g = (1 + 0.1 * _rand((512,), seed=2)).requires_grad_()
        be = (0.1 * _rand((512,), seed=3)).requires_grad_()
        x = _rand((8, 129, 300), seed=4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = ops.sliced_linear(x, W, None, 480, 300, "gelu", backend="cuda")
            z = ops.sliced_layernorm(h.float(), g, be, 480, 1e-12, backend="cuda")
            z.pow(2).mean().backward()
        return W.grad.clone(), g.grad.clone(), be.grad.clone()

    a, b = run(), run()
    for name, u, v in zip(("dW", "dgamma", "dbeta"), a, b):
        assert torch.equal(u, v), f"{name} differs between identical runs: max {(u - v).abs().max().item()}"


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("h", [37, 384, 768])
def test_layernorm_bf16_activations_fp32_params(h):
    """bf16 x and residual, fp32 gamma/beta (the contract), against an fp32 reference on the same
    rounded inputs: y, dx, dgamma, dbeta."""
    n = 517
    x, r, dy = (_rand((n, h), torch.bfloat16, seed=s) for s in (1, 2, 3))
    w, b = 1 + 0.1 * _rand((1024,), seed=4), 0.1 * _rand((1024,), seed=5)
    s = torch.empty_like(x)
    y = torch.empty_like(x)
    mean = torch.empty(n, device="cuda")
    rstd = torch.empty_like(mean)
    cb._CudaLayerNorm.forward(x, r, s, y, w, b, mean, rstd, h, 1e-12)
    s_ref = x + r  # bf16 sum, as the kernel stores it
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    sr = s_ref.float().requires_grad_()
    wr, br = w[:h].clone().requires_grad_(), b[:h].clone().requires_grad_()
    yr = F.layer_norm(sr, (h,), wr, br, 1e-12)
    yr.backward(dy.float())
    assert _report("ln y", y, yr) <= 2e-2 * max(1.0, yr.abs().max().item())
    dx = torch.empty_like(x)
    dg, db = cb._CudaLayerNorm.backward(dy, s, w, mean, rstd, dx, h)
    assert _report("ln dx", dx, sr.grad) <= 2e-2 * max(1.0, sr.grad.abs().max().item())
    assert _report("ln dgamma", dg, wr.grad) <= 1e-3 * max(1.0, wr.grad.abs().max().item())
    assert _report("ln dbeta", db, br.grad) <= 1e-3 * max(1.0, br.grad.abs().max().item())


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("variant", ["all", "mixed-delivery"])
def test_fused_functions_equal_their_parts_on_cuda(variant):
    """The fused q/k/v, linear + LayerNorm and FFN-block Functions on the cuBLASLt launchers, bf16
    autocast with fp32 masters, against the separate ops: the same bits (tests/test_kernels.py runs
    the full matrix; this quick copy runs early in bench/gpu_check.sh's test box)."""
    import test_kernels as tk

    v = next(x for x in tk.VARIANTS if x[0] == variant)
    tk.test_fused_qkv_equals_three_linears("cuda", torch.bfloat16, "inplace", "qkv")
    tk.test_fused_linear_layernorm_equals_its_parts("cuda", torch.bfloat16, "inplace", v)
    tk.test_fused_ffn_block_equals_its_parts("cuda", torch.bfloat16, "inplace", v)
    tk.test_fused_ops_sum_dx_terms_in_x_dtype("cuda")
