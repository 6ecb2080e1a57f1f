"""Sliced linear in Triton: y = act(x @ W[:o, :i].T + b[:o]), W read through its row stride.

One strided matmul kernel serves the three products (docs/guides/kernels.md, "The kernel contract"):
  forward  y[N, o]            = x[N, i] @ W[:o, :i]^T   (+ bias, + exact-erf GELU epilogue)
  dX       dX[N, i]           = dY'[N, o] @ W[:o, :i]
  dW       W.grad[:o, :i]    += dY'^T @ x              (ACCUMULATE: beta = 1, straight into the slice)
No slice of W is ever copied, and no full-size gradient temporary is allocated.

Mixed precision (the launcher contract of autodistil.ops.shared): the weight and bias may be
fp32 master parameters while the activations are bf16/fp16. The kernel casts each loaded
operand tile to the activation ("compute") dtype in registers, so tl.dot runs on tensor cores;
it accumulates in fp32 and, for dW, adds the fp32 result to the fp32 grad slice.

Split-K for dW: dW's output is the slice (o x i, a few dozen tiles) while its reduction runs over
all tokens (K = 4096 in the paper's batches), so one program per tile leaves most SMs idle. When a
config's tiles cannot fill the device, the dW launch splits K into S chunks (S <= 8 and
<= K / (4 BK), rounded up): S partial products go to an fp32 scratch (S, o, i) (S times the slice,
never the full parameter), and a second kernel adds them to the grad slice in a fixed order: no
atomics, so for a given tuned config the result is the same bit for bit on every run. Forward and
dX launches never split (their M is the token count; a small batch would pay a second launch).

Weight operand (forward and dX; dW never reads the weight): "shadow" (default) reads the cached
low-precision shadow of the whole parameter that the CUDA and torch backends use
(``ops.shared.lowp_shadow``: one copy per optimizer step, refreshed in place, 2 bytes per
element), so both GEMM operands are bf16/fp16 in memory; where no shadow may be kept (ZeRO-3,
DTensors, ``disable_lowp_shadow``) it falls back to "cast". "cast" loads the fp32 master tiles and
casts them in registers (no copy of the weight), at twice the shared memory per B tile: a
128x256x64 stage needs 80 KB instead of 48 KB, so the 3-stage big tiles do not fit. Chosen with
``weight_operand("cast")`` (a context) or ``AUTODISTIL_TRITON_WEIGHT=cast``; the GPU kernel
benchmark times both.

Autotuning: `_Tuner` picks one config per shape key, among the candidates whose shared memory
(``smem_bytes``: num_stages buffers of one A and one B tile, in their dtypes in memory) fits the
device's per-block limit; the others are never compiled. A launch that writes in place
(ACCUMULATE) is never run while tuning: on a key not yet tuned, the candidates are timed on a
scratch output of the slice's size without accumulation, then the chosen config runs once on the
real gradient. `configure_autotune(configs, do_bench, sms=..., smem_limit=...)` swaps the
candidates, the timer, the SM count the split rule assumes and the shared-memory limit (tests use
it to tune several configs and to split K under the interpreter). ``tuned_keys()`` and
``chosen_configs(n, o, i)`` say what was tuned (a CUDA-graph runner checks that its warm-up
covered every key; the kernel benchmark records each shape's configs).
"""

from __future__ import annotations

import contextvars
import os

import torch
import triton
import triton.language as tl

from autodistil.ops.shared import amp_state, compute_dtype, lowp_shadow, set_context

from ._common import INTERPRET, check_device


def default_configs(dtype=torch.bfloat16):
    """Candidates (<= 8 keeps tuning bounded): big wgmma-friendly tiles for the 4096-token layers
    of the paper spaces on Hopper, smaller ones for narrow layers and for dW (M, N = o, i: few
    tiles, K = tokens long). fp32 (exact IEEE dots, not the fast path) gets two small tiles."""
    if INTERPRET:  # the CPU interpreter: one small config, no autotuning
        return [triton.Config({"BM": 16, "BN": 16, "BK": 16, "GROUP_M": 4}, num_warps=1)]
    if dtype == torch.float32:
        shapes = ((64, 64, 32, 4, 3), (128, 64, 32, 8, 3))
    else:
        shapes = (
            (128, 256, 64, 8, 3),
            (256, 128, 64, 8, 3),
            (128, 128, 64, 8, 4),
            (128, 128, 64, 4, 4),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4),
            (64, 64, 128, 4, 3),
        )
    return [
        triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st in shapes
    ]


def _default_bench(fn):
    """Median time (ms) of fn on the GPU; short warmup/rep keeps a new shape's tuning ~0.2 s."""
    return triton.testing.do_bench(fn, warmup=5, rep=20)


@triton.jit
def _mm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    pre_ptr,
    M,
    N,
    K,
    K_CHUNK,
    s_am,
    s_ak,
    s_bk,
    s_bn,
    s_cm,
    s_cn,
    s_cs,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    SAVE_PRE: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C[M, N] (+)= act(A[M, K] @ B[K, N] + bias[N]); every operand by explicit strides.
    A is in the compute dtype; B (a weight, maybe fp32) is cast to it tile by tile in registers.
    One program per (BM, BN) tile on grid axis 0, in GROUP_M-swizzled order for L2 reuse; grid
    axis 1 splits K into chunks of K_CHUNK (a multiple of BK), chunk s written at c_ptr + s * s_cs."""
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    k_lo = pid_s * K_CHUNK
    k_hi = tl.minimum(K, k_lo + K_CHUNK)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    width = GROUP_M * n_n
    first_m = (pid // width) * GROUP_M
    group = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group
    pid_n = (pid % width) // group
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    # 64-bit row/column offsets: M * s_am or N * s_bn can pass 2^31 (a long token axis)
    a_ptrs = a_ptr + rm.to(tl.int64)[:, None] * s_am + (k_lo + rk).to(tl.int64)[None, :] * s_ak
    b_ptrs = b_ptr + (k_lo + rk).to(tl.int64)[:, None] * s_bk + rn.to(tl.int64)[None, :] * s_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + rk
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < k_hi), other=0.0)
        b = tl.load(b_ptrs, mask=(kk[:, None] < k_hi) & (rn[None, :] < N), other=0.0).to(
            a_ptr.dtype.element_ty
        )
        if IEEE:  # fp32 stays fp32 (no TF32), as the contract's 1e-5 tolerance needs
            acc += tl.dot(a, b, input_precision="ieee")
        else:  # bf16/fp16 operands: tensor cores, fp32 accumulation
            acc += tl.dot(a, b)
        a_ptrs += BK * s_ak
        b_ptrs += BK * s_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    c_off = pid_s.to(tl.int64) * s_cs + rm.to(tl.int64)[:, None] * s_cm + rn[None, :] * s_cn
    if ACT == 1:  # exact GELU: x * Phi(x)
        if SAVE_PRE:
            tl.store(
                pre_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :],
                acc.to(pre_ptr.dtype.element_ty),
                mask=cmask,
            )
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    if ACCUMULATE:  # beta = 1 in fp32: the fp32 grad slice += this tile
        acc += tl.load(c_ptr + c_off, mask=cmask, other=0.0).to(tl.float32)
    tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _splitk_reduce_kernel(
    p_ptr, c_ptr, M, N, S, s_ps, s_cm, s_cn, ACCUMULATE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr
):
    """c[:M, :N] (+)= sum over s = 0..S-1 of p[s] (p: (S, M, N) fp32 contiguous), in that fixed
    order: the same sum on every run."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    p_off = rm.to(tl.int64)[:, None] * N + rn[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(p_ptr + s * s_ps + p_off, mask=mask, other=0.0)
    c_off = rm.to(tl.int64)[:, None] * s_cm + rn[None, :] * s_cn
    if ACCUMULATE:
        acc += tl.load(c_ptr + c_off, mask=mask, other=0.0).to(tl.float32)
    tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=mask)


MAX_SPLIT = 8  # at most 8 K chunks (the fp32 scratch is S x the slice)
MIN_CHUNK_STEPS = 4  # at most cdiv(K, 4 BK) chunks (about 4 BK steps or more each)


def split_k(cfg, M: int, N: int, K: int, sms: int) -> tuple[int, int]:
    """(S, K_CHUNK) for a launch of cfg: S = 1 (one chunk of K) when its tiles fill half the
    device's `sms` SMs, else enough chunks to fill it, at most MAX_SPLIT and at most
    cdiv(K, MIN_CHUNK_STEPS * BK); K_CHUNK is a multiple of BK and S = cdiv(K, K_CHUNK) (no empty chunk)."""
    bm, bn, bk = cfg.kwargs["BM"], cfg.kwargs["BN"], cfg.kwargs["BK"]
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    want = min(MAX_SPLIT, sms // max(1, tiles), triton.cdiv(K, MIN_CHUNK_STEPS * bk))
    if 2 * tiles >= sms or want <= 1:
        return 1, K
    chunk = triton.cdiv(triton.cdiv(K, want), bk) * bk
    return triton.cdiv(K, chunk), chunk


def _device_sms(device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the CPU interpreter: no split
    unless a test sets the count with configure_autotune(sms=...))."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def smem_bytes(cfg, a_dtype: torch.dtype, b_dtype: torch.dtype) -> int:
    """Shared memory (bytes) the pipelined main loop of cfg needs: num_stages buffers of one A tile
    (BM x BK in A's dtype) and one B tile (BK x BN in B's dtype as it is in memory: fp32 for a
    master weight cast per tile). The epilogue reuses these buffers."""
    bm, bn, bk = cfg.kwargs["BM"], cfg.kwargs["BN"], cfg.kwargs["BK"]
    return max(1, cfg.num_stages) * (bm * bk * a_dtype.itemsize + bk * bn * b_dtype.itemsize)


def fitting_configs(configs, a_dtype, b_dtype, limit):
    """The configs whose smem_bytes fit `limit` (None: no limit known, all of them); when none fits,
    the one needing least (the tuner then reports its failure if it does not run)."""
    if limit is None:
        return list(configs)
    fit = [c for c in configs if smem_bytes(c, a_dtype, b_dtype) <= limit]
    return fit or [min(configs, key=lambda c: smem_bytes(c, a_dtype, b_dtype))]


_SMEM_LIMITS: dict = {}


def device_smem_limit(device) -> int | None:
    """The most shared memory one block may use on a CUDA device (the opt-in maximum), None
    elsewhere (the CPU interpreter) or when neither torch nor Triton says."""
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMEM_LIMITS:
        v = getattr(torch.cuda.get_device_properties(idx), "shared_memory_per_block_optin", None)
        if not v:
            try:
                v = triton.runtime.driver.active.utils.get_device_properties(idx)["max_shared_mem"]
            except Exception:  # noqa: BLE001  (no such query in this Triton: no pruning)
                v = None
        _SMEM_LIMITS[idx] = int(v) if v else None
    return _SMEM_LIMITS[idx]


class _Tuner:
    """Picks and remembers one config per key, among the candidates that fit the device's shared
    memory (fitting_configs). Candidates that still fail to compile or launch are skipped; if all
    fail the last error is raised. sms: the SM count the split-K rule assumes (None: the device's
    own); smem_limit: the shared-memory limit candidates are pruned by (None: the device's own)."""

    def __init__(self, configs, fp32_configs, do_bench, sms=None, smem_limit=None):
        if not configs or not fp32_configs:
            raise ValueError("autotune: a config list is empty")
        if sms is not None and (not isinstance(sms, int) or sms < 1):
            raise ValueError(f"autotune: sms must be a positive int or None, got {sms!r}")
        if smem_limit is not None and (not isinstance(smem_limit, int) or smem_limit < 1):
            raise ValueError(
                f"autotune: smem_limit must be a positive int (bytes) or None, got {smem_limit!r}"
            )
        self.configs, self.fp32_configs = list(configs), list(fp32_configs)
        self.do_bench = do_bench
        self.sms = sms
        self.smem_limit = smem_limit
        self.best: dict = {}

    def candidates(self, dtype, b_dtype=None, device=None):
        """The candidate list for a compute dtype; with b_dtype and device, only those that fit."""
        cands = self.fp32_configs if dtype == torch.float32 else self.configs
        if b_dtype is None:
            return cands
        limit = (
            self.smem_limit
            if self.smem_limit is not None
            else (device_smem_limit(device) if device is not None else None)
        )
        return fitting_configs(cands, dtype, b_dtype, limit)

    def pick(self, key, dtype, run, b_dtype=None, device=None):
        """run(config) launches the kernel with that config on an output that may be overwritten."""
        if key in self.best:
            return self.best[key]
        cands = self.candidates(dtype, b_dtype, device)
        if len(cands) == 1:
            self.best[key] = cands[0]
            return cands[0]
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"triton sliced_linear: shape {key[:3]} is seen for the first time inside CUDA graph "
                f"capture, where it cannot be autotuned (timing synchronises): run one step "
                f"outside capture first (warm-up), then capture"
            )
        times, err = [], None
        for cfg in cands:
            try:
                times.append(self.do_bench(lambda: run(cfg)))
            except Exception as e:  # out of resources for this tile (or it does not compile): skip it
                if isinstance(e, torch.OutOfMemoryError) or "illegal" in str(e).lower():
                    raise  # a real failure, not a property of the config: never report it as "config failed"
                err = e
                times.append(float("inf"))
        if min(times) == float("inf"):
            raise RuntimeError(f"autotune: every config failed for key {key}: {err}") from err
        best = cands[times.index(min(times))]
        self.best[key] = best
        return best


_TUNER = _Tuner(default_configs(torch.bfloat16), default_configs(torch.float32), _default_bench)


def configure_autotune(configs=None, do_bench=None, fp32_configs=None, sms=None, smem_limit=None):
    """Replace the candidate configs (bf16/fp16; fp32_configs for fp32, default: the same as
    `configs` when given), the benchmark function (fn -> ms), the SM count the split-K rule assumes
    and/or the shared-memory limit candidates are pruned by (None: the device's); forgets the tuned
    keys. Returns the previous (configs, do_bench, fp32_configs, sms, smem_limit) so a caller can
    restore them."""
    global _TUNER
    old = (_TUNER.configs, _TUNER.do_bench, _TUNER.fp32_configs, _TUNER.sms, _TUNER.smem_limit)
    lowp = configs if configs is not None else default_configs(torch.bfloat16)
    fp32 = (
        fp32_configs
        if fp32_configs is not None
        else (configs if configs is not None else default_configs(torch.float32))
    )
    _TUNER = _Tuner(lowp, fp32, do_bench or _default_bench, sms, smem_limit)
    return old


def tuned_config(key):
    """The config chosen for a key, or None (tests check first calls with it)."""
    return _TUNER.best.get(key)


def tuned_keys() -> frozenset:
    """Every key tuned so far (a CUDA-graph runner compares it around a capture)."""
    return frozenset(_TUNER.best)


def config_label(cfg) -> str:
    """'BMxBNxBK wW sS' of a config."""
    k = cfg.kwargs
    return f"{k['BM']}x{k['BN']}x{k['BK']} w{cfg.num_warps} s{cfg.num_stages}"


def chosen_configs(n: int, o: int, i: int, weight_dtype: torch.dtype | None = None) -> dict:
    """The configs chosen so far for the three products of a sliced linear with n tokens and slice
    (o, i): {"fwd": ..., "dx": ..., "dw": ...} as config_label strings with the B operand's dtype (one
    entry per key, epilogues apart; dW with its split-K factor on this device), for benchmark output.
    weight_dtype: only the forward and dX keys that read the weight in that dtype (the shadow's, or
    fp32 for "cast")."""
    out: dict = {}
    for key, cfg in _TUNER.best.items():
        M, N, K, acc = key[0], key[1], key[2], key[-1]
        kind = (
            "dw"
            if acc and (M, N, K) == (o, i, n)
            else "fwd"
            if not acc and (M, N, K) == (n, o, i)
            else "dx"
            if not acc and (M, N, K) == (n, i, o)
            else None
        )
        if kind is None or (kind != "dw" and weight_dtype is not None and key[7] != weight_dtype):
            continue
        lab = f"{config_label(cfg)} B:{str(key[7]).replace('torch.', '')}"
        if kind == "dw":
            sms = _TUNER.sms or (_device_sms(torch.device("cuda")) if torch.cuda.is_available() else 1)
            lab += f" split {split_k(cfg, M, N, K, sms)[0]}"
        out.setdefault(kind, [])
        if lab not in out[kind]:
            out[kind].append(lab)
    return {k: " | ".join(v) for k, v in out.items()}


def _launch(cfg, a, b, c, bias, pre, M, N, K, sa, sb, sc, act, accumulate, sms=1, split=False):
    """One launch of cfg; with `split` (the dW product: no bias, no activation) K is split when
    split_k says the tiles alone leave the device idle (partials, then the ordered reduction)."""
    kw = dict(cfg.kwargs)
    tiles = triton.cdiv(M, kw["BM"]) * triton.cdiv(N, kw["BN"])
    if split and (bias is not None or act or pre is not None):
        raise ValueError("triton sliced_linear: split-K is only for a product without bias or activation")
    S, chunk = split_k(cfg, M, N, K, sms) if split else (1, K)
    common = dict(IEEE=a.dtype == torch.float32, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **kw)
    if S == 1:
        _mm_kernel[(tiles, 1)](
            a,
            b,
            c,
            bias if bias is not None else c,
            pre if pre is not None else c,
            M,
            N,
            K,
            K,
            *sa,
            *sb,
            *sc,
            0,
            HAS_BIAS=bias is not None,
            ACT=act,
            SAVE_PRE=pre is not None,
            ACCUMULATE=accumulate,
            **common,
        )
        return
    part = torch.empty((S, M, N), device=c.device, dtype=torch.float32)  # fp32 partials: S x the slice
    _mm_kernel[(tiles, S)](
        a,
        b,
        part,
        part,
        part,
        M,
        N,
        K,
        chunk,
        *sa,
        *sb,
        N,
        1,
        M * N,
        HAS_BIAS=False,
        ACT=0,
        SAVE_PRE=False,
        ACCUMULATE=False,
        **common,
    )
    _splitk_reduce_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 64))](
        part, c, M, N, S, M * N, *sc, ACCUMULATE=accumulate, BM=32, BN=64
    )


def matmul(a, b, c, M, N, K, strides_a, strides_b, strides_c, bias=None, act=0, pre=None, accumulate=False):
    """c[:M, :N] (+)= act(a @ b + bias); a in the compute dtype, b any float dtype (cast per tile)."""
    if triton.cdiv(M, 16) * triton.cdiv(N, 16) >= 2**31:
        raise ValueError(
            f"triton sliced_linear: output {M}x{N} has too many tiles for one grid axis "
            f"(at most 2^31-1 programs)"
        )
    tuner = _TUNER
    sms = tuner.sms if tuner.sms is not None else _device_sms(c.device)
    key = (
        M,
        N,
        K,
        act,
        bias is not None,
        pre is not None,
        a.dtype,
        b.dtype,
        c.dtype,
        bias.dtype if bias is not None else None,
        accumulate,
    )  # dW (split) never shares dX's config
    if accumulate:  # never run an accumulating launch while tuning: time the candidates on a scratch output
        if key not in tuner.best:
            many = len(tuner.candidates(a.dtype, b.dtype, c.device)) > 1
            scratch = torch.empty((M, N), device=c.device, dtype=c.dtype) if many else c
            sc = (scratch.stride(0), scratch.stride(1))
            tuner.pick(
                key,
                a.dtype,
                lambda cfg: _launch(
                    cfg, a, b, scratch, bias, None, M, N, K, strides_a, strides_b, sc, act, False, sms, True
                ),
                b.dtype,
                c.device,
            )
        cfg = tuner.best[key]
    else:  # a fresh output: rerunning the launch while timing it is harmless
        cfg = tuner.pick(
            key,
            a.dtype,
            lambda cfg: _launch(
                cfg, a, b, c, bias, pre, M, N, K, strides_a, strides_b, strides_c, act, False, sms
            ),
            b.dtype,
            c.device,
        )
    _launch(
        cfg,
        a,
        b,
        c,
        bias,
        pre,
        M,
        N,
        K,
        strides_a,
        strides_b,
        strides_c,
        act,
        accumulate,
        sms,
        split=accumulate,
    )
    return c


@triton.jit
def _gelu_grad_kernel(dy_ptr, pre_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out = dy * GELU'(pre) (exact erf form), elementwise."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(pre_ptr + offs, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
    pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
    tl.store(out_ptr + offs, (dy * (cdf + x * pdf)).to(out_ptr.dtype.element_ty), mask=m)


WEIGHT_OPERANDS = ("cast", "shadow")


_OPERAND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "autodistil_triton_weight", default=None
)


def current_operand() -> str:
    """The weight operand in force: the enclosing weight_operand(...), else AUTODISTIL_TRITON_WEIGHT
    (read at each call, checked here: a bad value fails the linear that reads it, loudly, and
    leaves the rest of the backend usable), else "shadow"."""
    v = _OPERAND.get()
    if v is not None:
        return v
    v = os.environ.get("AUTODISTIL_TRITON_WEIGHT", "shadow")
    if v not in WEIGHT_OPERANDS:
        raise ValueError(
            f"AUTODISTIL_TRITON_WEIGHT={v!r} is not allowed: choose one of {list(WEIGHT_OPERANDS)}"
        )
    return v


def weight_operand(mode: str):
    """Within the block, forward and dX read the weight as `mode`: "shadow" (the cached low-precision
    shadow, the default) or "cast" (fp32 master tiles cast in registers, no copy); restored on exit."""
    if mode not in WEIGHT_OPERANDS:
        raise ValueError(f"weight operand {mode!r} is not allowed: choose one of {list(WEIGHT_OPERANDS)}")
    return set_context(_OPERAND, mode)


def _weight_for(weight, dtype):
    """The tensor forward/dX read the weight from: the parameter itself (cast per tile in the kernel),
    or, in "shadow" mode with a narrower dtype to convert to, its cached shadow (same shape and
    strides; never a wider copy, e.g. fp32 of a bf16 weight)."""
    if weight.dtype == dtype or current_operand() != "shadow" or dtype.itemsize >= weight.element_size():
        return weight
    s = lowp_shadow(weight, dtype)
    return weight if s is None else s


def linear_forward(x2, weight, bias, o, i, act: int, save_pre: bool):
    """x2: (N, i) contiguous, compute dtype; weight: (O_max, I_max) row-major in its own dtype (read
    [:o, :i] by stride, cast per tile); y and pre in x2.dtype."""
    Nt = x2.shape[0]
    weight = _weight_for(weight, x2.dtype)
    y = torch.empty((Nt, o), device=x2.device, dtype=x2.dtype)
    pre = torch.empty_like(y) if (act and save_pre) else None
    matmul(
        x2,
        weight,
        y,
        Nt,
        o,
        i,
        (x2.stride(0), 1),
        (weight.stride(1), weight.stride(0)),
        (o, 1),
        bias=bias,
        act=act,
        pre=pre,
    )
    return y, pre


def gelu_backward(dy, pre):
    out = torch.empty_like(dy)
    n = dy.numel()
    _gelu_grad_kernel[(triton.cdiv(n, 1024),)](dy, pre, out, n, BLOCK=1024)
    return out


class _TritonLinear:
    """The launchers behind the shared autograd Function (autodistil.ops.shared). The weight operand
    in force at forward is captured and re-entered around backward (autograd may run backward on
    another thread, where the caller's ContextVar is not set), so dX reads what forward read."""

    check = staticmethod(check_device)
    capture = staticmethod(current_operand)

    @staticmethod
    def restore(mode):
        return set_context(_OPERAND, mode)

    @staticmethod
    def forward(x2, weight, bias, o, i, act):
        return linear_forward(x2, weight, bias, o, i, act, save_pre=True)

    gelu_backward = staticmethod(gelu_backward)

    @staticmethod
    def dx(dy2, weight, o, i):  # (N, i) in dy2.dtype; the weight tile is cast to it in registers
        weight = _weight_for(weight, dy2.dtype)
        dx = torch.empty((dy2.shape[0], i), device=dy2.device, dtype=dy2.dtype)
        return matmul(
            dy2, weight, dx, dy2.shape[0], i, o, (o, 1), (weight.stride(0), weight.stride(1)), (i, 1)
        )

    @staticmethod
    def accumulate_dw(dy2, x2, dst, o, i):
        """dst[:o, :i] += dy2^T @ x2 through dst's strides; dy2, x2 in the compute dtype, dst fp32."""
        if x2.dtype != dy2.dtype:
            raise ValueError(f"triton sliced_linear: dy dtype {dy2.dtype} != x dtype {x2.dtype}")
        matmul(
            dy2, x2, dst, o, i, dy2.shape[0], (1, o), (i, 1), (dst.stride(0), dst.stride(1)), accumulate=True
        )


def linear_inference(x, weight, bias, out_features, in_features, activation=None):
    """No gradient: the autograd path's compute dtype (the autocast dtype under autocast), GELU in the
    epilogue, no pre-activation kept."""
    dt = compute_dtype(x, amp_state(x.device.type))
    x2 = x.reshape(-1, in_features).to(dt).contiguous()
    y, _ = linear_forward(
        x2, weight, bias, out_features, in_features, 1 if activation == "gelu" else 0, False
    )
    return y.reshape(*x.shape[:-1], out_features)
