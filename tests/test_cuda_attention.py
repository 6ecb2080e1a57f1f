"""CUDA attention (csrc/attention.cu via autodistil.ops.cuda_attention).

CPU part: the module imports without the extension and without a GPU; the boundary checks
name the tensor and the limit before anything is launched (meta / CPU tensors); the
extension's own boundary (when built) refuses T = max + 1 before touching memory.
GPU part (@pytest.mark.gpu): fp32 / fp16 / bf16 against an fp32 reference for several head dims
and sequence lengths with padding and every gradient; the SIMT path against the tensor-core path;
probabilities from the LSE; an all-padding sequence; bit-identical gradients on two identical
calls; the documented maximum T accepted and T + 1 refused."""
import math
import subprocess
import sys

import pytest
import torch

from autodistil.ops import cuda_attention as ca


# --------------------------------------------------------------------------------------- CPU
def test_module_imports_without_extension_or_gpu():
    code = ("import sys; import autodistil.ops.cuda_attention as m; "
            "assert 'autodistil._C' not in sys.modules, 'imported the extension at import time'; "
            "print(m.MAX_SEQ_LEN)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ca.MAX_SEQ_LEN)


def _meta(B, A, T, d, dtype=torch.bfloat16):
    # the model's head-split view of a (B, T, A*d) tensor
    return torch.empty((B, T, A * d), device="meta", dtype=dtype).view(B, T, A, d).transpose(1, 2)


@pytest.mark.parametrize("bad, match", [
    (lambda: (_meta(1, 1, ca.MAX_SEQ_LEN + 1, 64),) * 3, f"T={ca.MAX_SEQ_LEN + 1} exceeds the maximum {ca.MAX_SEQ_LEN}"),
    (lambda: (_meta(2, 3, 7, 129),) * 3, "head dim d=129 is not supported; allowed d <= 128"),
    (lambda: (_meta(2, 3, 7, 64), _meta(2, 3, 7, 64, torch.float16), _meta(2, 3, 7, 64)), "share one dtype"),
    (lambda: (_meta(2, 3, 7, 64, torch.float64),) * 3, "q has dtype torch.float64; allowed"),
    (lambda: (_meta(2, 3, 7, 64), _meta(2, 3, 8, 64), _meta(2, 3, 7, 64)), r"must share shape \(B, A, T, d\)"),
    (lambda: (torch.empty(2, 3, 64, 7, device="meta").transpose(-1, -2),) * 3, "stride 1 on its last"),
    (lambda: (torch.empty(3, 7, 64),) * 3, r"q must be 4-D \(B, A, T, d\)"),
])
def test_boundary_checks_name_the_tensor_and_the_limit(bad, match):
    with pytest.raises(ValueError, match=match):
        ca.check_inputs(*bad())


def test_boundary_checks_mask_and_device():
    q = _meta(2, 3, 7, 64)
    with pytest.raises(ValueError, match=r"key_mask must be \(B, T\)=\(2, 7\)"):
        ca.check_inputs(q, q, q, torch.ones(2, 8, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="key_mask must be bool or integer"):
        ca.check_inputs(q, q, q, torch.ones(2, 7, device="meta"))
    with pytest.raises(ValueError, match="impl 'fast' is not allowed"):
        ca.check_inputs(q, q, q, None, impl="fast")
    # the documented maximum passes every shape check and stops only at the device check
    qmax = _meta(1, 1, ca.MAX_SEQ_LEN, 64)
    with pytest.raises(ValueError, match="q is on meta; it must be a CUDA tensor"):
        ca.check_inputs(qmax, qmax, qmax)
    qc = torch.zeros(1, 2, 5, 32)
    with pytest.raises(ValueError, match="q is on cpu; it must be a CUDA tensor"):
        ca.attention(qc, qc, qc, None, need_probs=False)


def _ext_or_skip():
    try:
        from autodistil import _C
    except ImportError as e:
        pytest.skip(f"autodistil._C not built: {e}")
    if not hasattr(_C, "attention_forward"):
        pytest.skip("autodistil._C has no attention bindings")
    return _C


def test_extension_boundary_matches_the_documented_maximum():
    """The C++ launchers check the same maximum before any memory is touched (null pointers here)."""
    _C = _ext_or_skip()
    assert _C.attention_max_seq_len() == ca.MAX_SEQ_LEN
    T = ca.MAX_SEQ_LEN + 1
    with pytest.raises(ValueError, match=f"attention_forward: sequence length T={T} exceeds the maximum"):
        _C.attention_forward(2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, T, 64, *([0] * 12), 0)
    with pytest.raises(ValueError, match=f"attention_backward: sequence length T={T} exceeds the maximum"):
        _C.attention_backward(2, 0, *([0] * 12), 1, 1, T, 64, *([0] * 24), 0)
    with pytest.raises(ValueError, match=f"attention_probs: sequence length T={T} exceeds the maximum"):
        _C.attention_probs(2, 0, 0, 0, 0, 0, 0, 1, 1, T, 64, *([0] * 6), 0)
    with pytest.raises(ValueError, match="head dim d=129 is not supported"):
        _C.attention_forward(2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 8, 129, *([0] * 12), 0)


# --------------------------------------------------------------------------------------- GPU
DEV = "cuda"
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _ref(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v in q's dtype for the products (fp32 softmax); masked keys get
    probability 0 and a row with no valid key gives 0 (not uniform weights)."""
    s = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    if mask is not None:
        keep = mask[:, None, None, :].bool()
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return (p.to(q.dtype) @ v), p


def _data(B, A, T, d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((B, T, A * d), generator=g) * scale).to(DEV)


def _run(impl, dtype, qkv32, do32, mask, B, A, T, d, need_probs=False):
    leaves = [t.to(dtype).clone().requires_grad_() for t in qkv32]
    q, k, v = (t.view(B, T, A, d).transpose(1, 2) for t in leaves)           # (B, A, T, d) views
    if impl == "ref":
        o, p = _ref(q, k, v, mask)
    else:
        o, _ = ca.attention(q, k, v, mask, need_probs=False, impl=impl)
        p = None
        if need_probs:
            with torch.no_grad():
                _, p = ca.attention(q.detach(), k.detach(), v.detach(), mask, need_probs=True, impl=impl)
    o.backward(do32.to(dtype))
    return [o.detach(), *[t.grad for t in leaves]], p


def _compare(got, ref32, ref_lp, dtype, tag):
    names = ("o", "dq", "dk", "dv")
    errs = {n: (g.float() - r.float()).abs().max().item() for n, g, r in zip(names, got, ref32)}
    base = {n: (r.float() - r32.float()).abs().max().item() for n, r, r32 in zip(names, ref_lp, ref32)}
    bad = []
    for n, g, r in zip(names, got, ref32):
        if not torch.isfinite(g).all():
            bad.append(f"{n} not finite")
        elif dtype == torch.float32:
            tol = 1e-5 + 1e-5 * r.abs().max().item()
            if errs[n] > tol:
                bad.append(f"{n}: max err {errs[n]:.3e} > {tol:.1e}")
        elif errs[n] > 2 * base[n] + FLOOR[dtype]:
            bad.append(f"{n}: max err {errs[n]:.3e} > 2 x torch {dtype} {base[n]:.3e} + {FLOOR[dtype]}")
    msg = f"{tag}: errors {({n: f'{e:.2e}' for n, e in errs.items()})} torch-lowp {({n: f'{e:.2e}' for n, e in base.items()})}"
    print(msg)
    assert not bad, f"{msg}; " + "; ".join(bad)


def _case(dtype, T, d, impl, B=2, A=3, mask_kind="pad"):
    mask = torch.ones(B, T, dtype=torch.long, device=DEV)
    if mask_kind == "pad":
        mask[1, max(1, T - max(3, T // 3)):] = 0
    qkv32 = [_data(B, A, T, d, s) for s in (10, 11, 12)]
    do32 = _data(B, T, A, d, 13).view(B, T, A, d).transpose(1, 2)
    got, _ = _run(impl, dtype, qkv32, do32, mask, B, A, T, d)
    ref32, _ = _run("ref", torch.float32, qkv32, do32, mask, B, A, T, d)
    ref_lp = _run("ref", dtype, qkv32, do32, mask, B, A, T, d)[0] if dtype != torch.float32 else ref32
    _compare(got, ref32, ref_lp, dtype, f"{impl} {dtype} T={T} d={d}")
    return got


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d", [32, 64, 128, 24])
@pytest.mark.parametrize("T", [1, 7, 128, 129, 300])
def test_matches_fp32_reference(dtype, d, T):
    _case(dtype, T, d, "auto")


@pytest.mark.gpu
@pytest.mark.parametrize("d", [16, 20])
def test_small_and_unaligned_head_dims(d):
    """d=16 (the unit-test space), d=20 (rows not 16-byte aligned: the plain-load path)."""
    for dtype in (torch.bfloat16, torch.float32):
        _case(dtype, 70, d, "auto")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_simt_path_matches_reference_and_tensor_cores(dtype, d):
    T = 129
    simt = _case(dtype, T, d, "simt")
    mma = _case(dtype, T, d, "auto")
    for n, a, b in zip(("o", "dq", "dk", "dv"), simt, mma):
        err = (a.float() - b.float()).abs().max().item()
        scale = b.float().abs().max().item()
        print(f"simt vs mma {dtype} d={d} {n}: {err:.3e} (max |x| {scale:.3e})")
        assert err <= 0.05 * scale + FLOOR[dtype], f"simt vs mma {n}: {err} (max |x| {scale})"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probs_from_lse(dtype):
    B, A, T, d = 2, 3, 77, 64
    mask = torch.ones(B, T, dtype=torch.long, device=DEV)
    mask[0, 50:] = 0
    q, k, v = (_data(B, A, T, d, s).to(dtype).view(B, T, A, d).transpose(1, 2) for s in (1, 2, 3))
    with torch.no_grad():
        o, p = ca.attention(q, k, v, mask, need_probs=True)
        ro, rp = _ref(q.float(), k.float(), v.float(), mask)
    assert p.shape == (B, A, T, T) and p.dtype == dtype and not p.requires_grad
    err = (p.float() - rp).abs().max().item()
    print(f"probs {dtype}: max err {err:.3e}, row-sum err {(p.float().sum(-1) - 1).abs().max().item():.3e}")
    assert err <= (1e-6 if dtype == torch.float32 else 8e-3), err
    assert (p[0, :, :, 50:] == 0).all(), "masked keys must get probability 0"
    assert torch.allclose(p.float().sum(-1), torch.ones(B, A, T, device=DEV), atol=1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("impl", ["auto", "simt"])
def test_all_padding_sequence_gives_zeros(dtype, impl):
    B, A, T, d = 2, 2, 70, 64
    mask = torch.ones(B, T, dtype=torch.long, device=DEV)
    mask[1] = 0                                                           # an all-padding sequence
    qkv32 = [_data(B, A, T, d, s) for s in (4, 5, 6)]
    do32 = _data(B, T, A, d, 7).view(B, T, A, d).transpose(1, 2)
    got, _ = _run(impl, dtype, qkv32, do32, mask, B, A, T, d)
    o, dq, dk, dv = got
    for n, g in zip(("o", "dq", "dk", "dv"), got):
        assert torch.isfinite(g).all(), f"{n} has NaN/inf"
    assert (o[1] == 0).all(), f"o of the padded sequence: max |o| {o[1].abs().max().item()}"
    for n, g in (("dq", dq), ("dk", dk), ("dv", dv)):                      # leaves: (B, T, A*d)
        assert (g[1] == 0).all(), f"{n} of the padded sequence: max {g[1].abs().max().item()}"
    with torch.no_grad():
        q, k, v = (t.to(dtype).view(B, T, A, d).transpose(1, 2) for t in qkv32)
        _, p = ca.attention(q, k, v, mask, need_probs=True, impl=impl)
    assert (p[1] == 0).all() and torch.isfinite(p).all()
    # the other sequence is unaffected (sequence 0 only: the reference's softmax backward is NaN
    # on the all-padding rows)
    ref32, _ = _run("ref", torch.float32, qkv32, do32, mask, B, A, T, d)
    tol = 1e-4 if dtype == torch.float32 else 6e-2
    for n, g, r in zip(("o", "dq", "dk", "dv"), got, ref32):
        err = (g[0].float() - r[0]).abs().max().item()
        print(f"all-padding {impl} {dtype} {n}: max err vs fp32 reference {err:.3e}")
        assert err <= tol, f"{n}: {err}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_is_bit_identical_on_two_calls(dtype):
    B, A, T, d = 2, 4, 300, 64
    mask = torch.ones(B, T, dtype=torch.long, device=DEV)
    mask[1, 200:] = 0
    qkv32 = [_data(B, A, T, d, s) for s in (20, 21, 22)]
    do32 = _data(B, T, A, d, 23).view(B, T, A, d).transpose(1, 2)
    a, _ = _run("auto", dtype, qkv32, do32, mask, B, A, T, d)
    b, _ = _run("auto", dtype, qkv32, do32, mask, B, A, T, d)
    for n, x, y in zip(("o", "dq", "dk", "dv"), a, b):
        assert torch.equal(x, y), f"{n} differs between two identical calls: {(x.float() - y.float()).abs().max()}"


@pytest.mark.gpu
def test_documented_maximum_T_accepted_and_one_more_refused():
    T, d = ca.MAX_SEQ_LEN, 32
    g = torch.Generator().manual_seed(0)
    q, k, v = ((torch.randn(1, 1, T, d, generator=g)).to(DEV, torch.bfloat16).requires_grad_() for _ in range(3))
    mask = torch.zeros(1, T, dtype=torch.long, device=DEV)
    mask[0, :40] = 1
    mask[0, -24:] = 1                                     # valid keys at both ends of the long sequence
    o, _ = ca.attention(q, k, v, mask, need_probs=False)
    o.float().sum().backward()
    keep = mask[0].bool()
    rows = torch.cat([torch.arange(0, 64), torch.arange(T - 64, T)]).to(DEV)  # first and last query tiles
    s = (q[0, 0, rows].float() @ k[0, 0, keep].float().T) / math.sqrt(d)
    ref = torch.softmax(s, -1) @ v[0, 0, keep].float()
    err = (o[0, 0, rows].float() - ref).abs().max().item()
    print(f"T={T}: max err on the first/last query tiles {err:.3e}")
    assert err < 3e-2, err
    for n, t in (("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(t).all(), n
    assert (k.grad[0, 0, ~keep] == 0).all() and (v.grad[0, 0, ~keep] == 0).all(), "masked keys got a gradient"
    qq = torch.zeros(1, 1, T + 1, d, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"T={T + 1} exceeds the maximum {T}"):
        ca.attention(qq, qq, qq, None, need_probs=False)


@pytest.mark.gpu
def test_outputs_keep_the_head_split_layout():
    """Outputs and gradients of head-split views are written in (B, T, A, d) order: merging the
    heads back into (B, T, A*d) is a view."""
    B, A, T, d = 2, 3, 40, 32
    qkv32 = [_data(B, A, T, d, s) for s in (1, 2, 3)]
    leaves = [t.to(torch.bfloat16).requires_grad_() for t in qkv32]
    q, k, v = (t.view(B, T, A, d).transpose(1, 2) for t in leaves)
    o, _ = ca.attention(q, k, v, None, need_probs=False)
    assert o.transpose(1, 2).is_contiguous()
    o.transpose(1, 2).reshape(B, T, A * d).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)
