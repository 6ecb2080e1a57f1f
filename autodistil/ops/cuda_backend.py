"""The "cuda" backend: launchers over ``autodistil._C`` (csrc/) for the shared autograd templates
(autodistil.ops.shared), which take raw device pointers, sizes, leading dimensions and the
current stream.

- Sliced linear: cuBLASLt GEMMs (csrc/gemm_lt.cpp). W[:o, :i] is a strided sub-matrix with
  leading dimension I_max (no copy); dW accumulates with beta = 1 straight into the fp32 grad
  slice from bf16/fp16 activations (fp32 compute, fp32 scale); fp32 runs plain fp32 GEMMs (no
  TF32). The bias is cuBLASLt's BIAS epilogue (one rounding); exact erf GELU is an elementwise
  kernel on the pre-activation, and its backward another (csrc/gelu.cu).
- Mixed precision: cuBLASLt needs A and B in one type, so an fp32 master weight meets bf16/fp16
  activations through ``lowp_shadow`` (one full-size low-precision copy per parameter, cached
  until the parameter changes: 2 bytes per weight element for bf16/fp16). Where no shadow may be
  cached (ZeRO-3 partitions, DTensors), the slice is cast per call. The bias epilogue reads the
  bias in the output dtype (cublasLt.h: bias elements have D's type), which is also what PyTorch's
  autocast does for F.linear.
- Sliced LayerNorm: csrc/layernorm.cu (fp32 or activation-dtype gamma/beta, deterministic
  dgamma/dbeta).
- Attention: the Triton flash kernel (``autodistil.kernels.attention``: the padding mask inside the
  kernel, 0 for an all-padding sequence, a deterministic backward without atomics) when the Triton
  backend can run, else PyTorch's SDPA with the same contract (``sdpa_attention``); no attention
  kernel of its own.

cuBLASLt is resolved at run time: the copy torch already loaded, then the nvidia-cublas wheel's
lib folder ($AUTODISTIL_CUBLAS_ROOT/lib first), then the plain soname.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch
import torch.nn.functional as F

from .cuda_launch import DTYPE_CODE, on as _on, ptr as _p, stream as _stream
from .shared import amp_state, compute_dtype, lowp_shadow, reference_attention
from .surface import op_surface

_DTYPE = DTYPE_CODE
WORKSPACE_BYTES = 32 << 20  # cuBLASLt workspace per (device, stream)

_C = None
_why_not_built = None
try:
    from .. import _C  # noqa: F811
except ImportError as e:  # not built (no nvcc at install time, or AUTODISTIL_BUILD_CUDA=0)
    _why_not_built = f"the CUDA extension autodistil._C is not built ({e}); reinstall with nvcc on PATH"

_lt_path = None
_lt_error = None
_workspaces: dict = {}


# --- availability ---------------------------------------------------------------------------
def cublaslt_candidates(soname: str) -> list:
    """Library paths to try after the already-loaded copy: $AUTODISTIL_CUBLAS_ROOT/lib, the
    nvidia wheels' lib folders (nvidia/cu13/lib, nvidia/cublas/lib) that exist, the plain soname."""
    major = soname.rsplit(".", 1)[-1]
    out = []
    root = os.environ.get("AUTODISTIL_CUBLAS_ROOT")
    if root:
        out.append(os.path.join(root, "lib", soname))
    spec = importlib.util.find_spec("nvidia")
    for p in (spec.submodule_search_locations or []) if spec is not None else []:
        for sub in (f"cu{major}", "cublas"):
            f = os.path.join(p, sub, "lib", soname)
            if os.path.isfile(f):
                out.append(f)
    out.append(soname)
    return list(dict.fromkeys(out))


def load_cublaslt() -> str:
    """Resolve cuBLASLt once; returns the path used, raises RuntimeError saying why not."""
    global _lt_path, _lt_error
    if _lt_path is None and _lt_error is None:
        try:
            _lt_path = _C.cublaslt_load(cublaslt_candidates(_C.cublaslt_soname()), True)
        except RuntimeError as e:
            _lt_error = str(e)
    if _lt_error is not None:
        raise RuntimeError(_lt_error)
    return _lt_path


def unavailable_reason():
    """None when the backend can run, else why not (one line per cause)."""
    if _C is None:
        return _why_not_built
    if not hasattr(_C, "gemm_forward"):
        return "autodistil._C is out of date (built from older sources): reinstall with pip install -e ."
    if not _C.has_cublaslt():
        return (
            "autodistil._C was built without cublasLt.h: pip install nvidia-cublas (or set "
            "AUTODISTIL_CUBLAS_ROOT to a folder with include/cublasLt.h), then reinstall autodistil"
        )
    if not torch.cuda.is_available() or _C.device_count() == 0:
        return "the CUDA extension is built but no CUDA GPU is visible"
    try:
        load_cublaslt()
    except RuntimeError as e:
        return str(e)
    return None


# --- launch helpers -------------------------------------------------------------------------
def _code(t):
    return _DTYPE[t.dtype]


def _workspace(device):
    """(pointer, bytes, stream): the cuBLASLt workspace of the device's current stream and that
    stream's raw handle (looked up once per GEMM: host time counts in a host-bound step)."""
    stream = _stream(device)
    key = (device.index, stream)
    ws = _workspaces.get(key)
    if ws is None:
        ws = _workspaces[key] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return ws.data_ptr(), WORKSPACE_BYTES, stream


def _check_tensors(op, named, vectors=()):
    """Boundary checks before any launch (so they also run without a GPU), naming the tensor:
    types and dtypes first, then the 1-D unit-stride vectors, then devices (CUDA, same as x)."""
    named = [(n, t) for n, t in named if t is not None]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"cuda {op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPE:
            raise ValueError(f"cuda {op}: {name} has dtype {t.dtype}; allowed: float32, float16, bfloat16")
    for name, t in named:
        if name in vectors:
            _check_vector(op, name, t)
    like = named[0][1]
    for name, t in named:
        if not t.is_cuda:
            raise ValueError(f"cuda {op}: {name} is on {t.device}; it must be a CUDA tensor")
        if t.device != like.device:
            raise ValueError(f"cuda {op}: {name} is on {t.device} but {named[0][0]} is on {like.device}")


def _check_vector(op, name, t):
    if t is not None and (t.dim() != 1 or t.stride(0) != 1):
        raise ValueError(
            f"cuda {op}: {name} must be a 1-D tensor with unit stride, got shape {tuple(t.shape)} "
            f"and strides {t.stride()}"
        )


def _operand(param, dtype, index):
    """param[index]'s storage in `dtype` for a GEMM: the parameter itself, its cached low-precision
    shadow (same layout, so the slice keeps the full row stride), or a per-call cast of just the
    slice where no shadow may be kept."""
    s = lowp_shadow(param, dtype)
    return s if s is not None else param[index].to(dtype)


# --- sliced linear --------------------------------------------------------------------------
def _linear_forward(x2, weight, bias, o, i, act, keep_pre):
    """(y, pre): y = act(x2 @ W[:o, :i]^T + b[:o]) in x2.dtype; pre = the pre-activation (or None)."""
    n, dt = x2.shape[0], x2.dtype
    w = _operand(weight, dt, (slice(0, o), slice(0, i)))
    b = None if bias is None else _operand(bias, dt, slice(0, o))
    if w.stride(1) != 1:
        raise ValueError(
            f"cuda sliced_linear: weight must have unit stride on its last dim, got {weight.stride()}"
        )
    _check_vector("sliced_linear", "bias", b)
    pre = torch.empty((n, o), device=x2.device, dtype=dt)  # (N, o)
    with _on(x2.device):
        ws, wsz, stream = _workspace(x2.device)
        _C.gemm_forward(
            _code(x2),
            x2.data_ptr(),
            w.data_ptr(),
            w.stride(0),
            _p(b),
            pre.data_ptr(),
            n,
            o,
            i,
            ws,
            wsz,
            stream,
        )
        if not act:
            return pre, None
        y = torch.empty_like(pre) if keep_pre else pre  # in place when the pre-activation is not kept
        _C.gelu_forward(_code(pre), pre.data_ptr(), y.data_ptr(), pre.numel(), stream)
    return y, (pre if keep_pre else None)


class _CudaLinear:
    """The launchers behind the shared autograd Function (autodistil.ops.shared)."""

    @staticmethod
    def check(x, weight, bias):
        _check_tensors("sliced_linear", (("x", x), ("weight", weight), ("bias", bias)), vectors=("bias",))

    @staticmethod
    def forward(x2, weight, bias, o, i, act):
        return _linear_forward(x2, weight, bias, o, i, act, keep_pre=True)

    @staticmethod
    def gelu_backward(dy2, pre):
        g = torch.empty_like(dy2)
        with _on(dy2.device):
            _C.gelu_backward(
                _code(dy2), dy2.data_ptr(), pre.data_ptr(), g.data_ptr(), dy2.numel(), _stream(dy2.device)
            )
        return g

    @staticmethod
    def dx(dy2, weight, o, i):
        n, dt = dy2.shape[0], dy2.dtype
        w = _operand(weight, dt, (slice(0, o), slice(0, i)))
        dx = torch.empty((n, i), device=dy2.device, dtype=dt)  # (N, i)
        with _on(dy2.device):
            ws, wsz, stream = _workspace(dy2.device)
            _C.gemm_dx(
                _code(dy2), dy2.data_ptr(), w.data_ptr(), w.stride(0), dx.data_ptr(), n, o, i, ws, wsz, stream
            )
        return dx

    @staticmethod
    def accumulate_dw(dy2, x2, dst, o, i):
        """dst[:o, :i] += dy2^T @ x2 with beta = 1, through dst's row stride (fp32 dst from bf16/fp16
        activations: fp32 accumulation, no full-size temporary)."""
        if x2.dtype != dy2.dtype:
            raise ValueError(f"cuda sliced_linear: dy dtype {dy2.dtype} != x dtype {x2.dtype}")
        if dst.dtype not in _DTYPE or dst.stride(1) != 1:
            raise ValueError(
                f"cuda sliced_linear: the weight gradient must be fp32/fp16/bf16 with unit stride on "
                f"its last dim, got {dst.dtype} with strides {dst.stride()}"
            )
        n = dy2.shape[0]
        with _on(dy2.device):
            ws, wsz, stream = _workspace(dy2.device)
            if dst.dtype in (torch.float32, dy2.dtype):
                _C.gemm_dw(
                    _code(dy2),
                    _code(dst),
                    dy2.data_ptr(),
                    x2.data_ptr(),
                    dst.data_ptr(),
                    dst.stride(0),
                    n,
                    o,
                    i,
                    ws,
                    wsz,
                    stream,
                )
            else:  # e.g. a bf16 parameter trained with fp32 activations: accumulate in fp32, then add
                tmp = torch.zeros((o, i), device=dst.device, dtype=torch.float32)
                _C.gemm_dw(
                    _code(dy2), 0, dy2.data_ptr(), x2.data_ptr(), tmp.data_ptr(), i, n, o, i, ws, wsz, stream
                )
                dst[:o, :i].add_(tmp)


# --- sliced LayerNorm -----------------------------------------------------------------------
def _ln_param(p, dt, h):
    """gamma/beta as the kernel takes them: fp32 or the activation dtype, unit stride."""
    if p.dtype != torch.float32 and p.dtype != dt:
        s = lowp_shadow(p, dt)
        p = s if s is not None else p[:h].to(dt)
    return p


class _CudaLayerNorm:
    @staticmethod
    def check(x, weight, bias, residual):
        _check_tensors(
            "sliced_layernorm",
            (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)),
            vectors=("weight", "bias"),
        )

    @staticmethod
    def forward(x2, r2, s, y, weight, bias, mean, rstd, width, eps):
        w, b = _ln_param(weight, x2.dtype, width), _ln_param(bias, x2.dtype, width)
        if w.dtype != b.dtype:
            b = b.to(w.dtype)
        with _on(x2.device):
            _C.layernorm_forward(
                _code(x2),
                _code(w),
                x2.data_ptr(),
                _p(r2),
                _p(s) if r2 is not None else 0,
                y.data_ptr(),
                w.data_ptr(),
                b.data_ptr(),
                mean.data_ptr(),
                rstd.data_ptr(),
                x2.shape[0],
                width,
                eps,
                _stream(x2.device),
            )

    @staticmethod
    def backward(dy2, s, weight, mean, rstd, dx, h):
        n = dy2.shape[0]
        dgamma = torch.zeros(h, device=dy2.device, dtype=torch.float32)
        dbeta = torch.zeros_like(dgamma)
        if n == 0:
            return dgamma, dbeta
        w = _ln_param(weight, dy2.dtype, h)
        rows = _C.layernorm_backward_rows(n)
        blocks = -(-n // rows)
        dw_part = torch.empty((blocks, h), device=dy2.device, dtype=torch.float32)  # per-block partials
        db_part = torch.empty_like(dw_part)
        with _on(dy2.device):
            _C.layernorm_backward(
                _code(dy2),
                _code(w),
                dy2.data_ptr(),
                s.data_ptr(),
                w.data_ptr(),
                mean.data_ptr(),
                rstd.data_ptr(),
                dx.data_ptr(),
                dw_part.data_ptr(),
                db_part.data_ptr(),
                dgamma.data_ptr(),
                dbeta.data_ptr(),
                n,
                h,
                rows,
                _stream(dy2.device),
            )
        return dgamma, dbeta


def _linear_inference(x, weight, bias, out_features, in_features, activation=None):
    """No gradient: the template's compute dtype rule, GELU in place (no pre-activation kept)."""
    _CudaLinear.check(x, weight, bias)
    x2 = x.reshape(-1, in_features).to(compute_dtype(x, amp_state(x.device.type))).contiguous()
    y, _ = _linear_forward(
        x2, weight, bias, out_features, in_features, 1 if activation == "gelu" else 0, False
    )
    return y.reshape(*x.shape[:-1], out_features)


OPS = op_surface("cuda", _CudaLinear, _CudaLayerNorm, _linear_inference)
sliced_linear, sliced_qkv, sliced_layernorm = OPS.sliced_linear, OPS.sliced_qkv, OPS.sliced_layernorm
sliced_linear_layernorm, sliced_ffn_layernorm = OPS.sliced_linear_layernorm, OPS.sliced_ffn_layernorm


def _triton_attention():
    """The Triton backend's attention when that backend can run here, else None (the reason is
    what ``ops.backend_status()["triton"]`` says)."""
    from .dispatch import BackendUnavailable, backend_module

    try:
        return backend_module("triton").attention
    except BackendUnavailable:
        return None


def sdpa_attention(q, k, v, key_mask, need_probs: bool, dropout_p: float = 0.0):
    """PyTorch's SDPA with what the contract adds: masked keys get probability 0; a sequence whose
    keys are all padding gets 0 context and zero gradients (SDPA alone gives NaN or uniform rows:
    such rows attend to every key here and are multiplied by 0); under
    ``torch.use_deterministic_algorithms(True)`` the math backend, whose backward has no atomics.
    Probabilities or dropout: the torch reference (``shared.reference_attention``)."""
    if need_probs or dropout_p > 0:
        return reference_attention(q, k, v, key_mask, need_probs, dropout_p)
    m = has = None
    if key_mask is not None:
        valid = key_mask.to(torch.bool)  # (B, T)
        has = valid.any(-1)  # (B,) no host read
        m = (valid | ~has[:, None])[:, None, None, :]  # (B, 1, 1, T)
    ctx = contextlib.nullcontext()
    if torch.are_deterministic_algorithms_enabled():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        ctx = sdpa_kernel([SDPBackend.MATH])
    with ctx:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # (B, A, T, d)
    if has is not None:
        o = o * has[:, None, None, None].to(o.dtype)
    return o, None


def attention(q, k, v, key_mask, need_probs, dropout_p=0.0):
    """(context (B, A, T, d), probs (B, A, T, T) without gradient, or None): the Triton flash kernel
    when the Triton backend can run, else ``sdpa_attention``. The dispatch routes dropout and
    probabilities with gradient to the torch reference before a backend is called."""
    tri = _triton_attention()
    if tri is not None:
        return tri(q, k, v, key_mask, need_probs, dropout_p)
    return sdpa_attention(q, k, v, key_mask, need_probs, dropout_p)
