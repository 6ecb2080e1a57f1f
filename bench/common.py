"""Shared benchmark helpers: device facts for every CSV row, CSV writing, GPU timing and
memory peaks, the one "naive slicing" mode, CPU memory peaks."""

from __future__ import annotations

import contextlib
import ctypes
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _machine():
    """autodistil/machine.py loaded from this repository by its path: it needs only the standard library
    (torch inside its functions), so gpu_check.sh's facts step works before autodistil is installed,
    and importing it never mixes this tree with an installed copy of the package."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "autodistil" / "machine.py"
    spec = importlib.util.spec_from_file_location("_autodistil_machine", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cpu_model, device_info, device_facts = (
    getattr(_machine(), n) for n in ("cpu_model", "device_info", "device_facts")
)


def write_rows_csv(path, rows):
    from autodistil.io import write_rows_csv as f

    return f(path, rows)


RESULTS = Path(__file__).parent / "results"


def write_csv(name, rows: list[dict]) -> Path:
    """rows -> CSV, atomically; `name` is a file name under bench/results/ or a path."""
    p = Path(name)
    return write_rows_csv(p if (p.is_absolute() or len(p.parts) > 1) else RESULTS / p, rows)


def geomean(xs) -> float:
    xs = [float(x) for x in xs]
    if not xs or any(not (x > 0 and math.isfinite(x)) for x in xs):
        raise ValueError(f"geomean needs positive finite values, got {xs}")
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


@contextlib.contextmanager
def naive_slicing(model=None):
    """The "naive eager slicing" baseline of every benchmark, one implementation: the torch
    backend with autograd gradient delivery, i.e. F.linear(x, W[:o, :i]), F.embedding(ids,
    E[:, :h]) and F.layer_norm on slices, whose slice backward allocates a zero tensor of the
    full parameter size per sliced use. With `model`, its backend is set to "torch" meanwhile."""
    from autodistil.ops.shared import grad_mode_ctx

    old = getattr(model, "backend", None)
    if model is not None:
        model.backend = "torch"
    try:
        with grad_mode_ctx("autograd"):
            yield
    finally:
        if model is not None:
            model.backend = old


class PlainSlicing(torch.nn.Module):
    """The naive baseline of the supernet step: a SuperBert's own parameters run through plain PyTorch
    slicing in a plain model, autograd end to end, with no autodistil op, dispatch or autograd
    Function: F.embedding(ids, E[:, :h]), F.linear(x, W[:o, :i], b[:o]), F.layer_norm(x, (h,),
    g[:h], b[:h]), F.gelu, SDPA with the bool padding mask (softmax attention when probabilities are
    asked for). Each sliced use's backward allocates a full-size gradient of its parameter, which
    autograd adds into .grad. Same signature and output as SuperBert.forward; parameters() are the
    SuperBert's (an optimizer over them steps this model too)."""

    def __init__(self, model):
        super().__init__()
        self.sb = model

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        *,
        output_hidden_states=False,
        output_qkv=False,
        output_attentions=False,
        subnet=None,
    ):
        import torch.nn.functional as F
        from autodistil.nn.superbert import SuperBertOutput

        m, c = self.sb, self.sb.config
        cfg = m.check_subnet(subnet) if subnet is not None else m.active
        h, a, f, d = cfg.hidden, cfg.heads, cfg.ffn, c.head_dim
        w, (B, T) = a * d, input_ids.shape
        drop = lambda t, p: F.dropout(t, p, self.training) if p > 0 else t  # noqa: E731
        lin = lambda x, mod, o, i: F.linear(x, mod.weight[:o, :i], mod.bias[:o])  # noqa: E731
        ln = lambda x, mod, n: F.layer_norm(x, (n,), mod.weight[:n], mod.bias[:n], mod.eps)  # noqa: E731
        e = m.embeddings
        tt = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = F.embedding(input_ids, e.word_embeddings.weight[:, :h])  # (B, T, h)
        x = x + F.embedding(tt, e.token_type_embeddings.weight[:, :h])
        x = x + F.embedding(torch.arange(T, device=input_ids.device), e.position_embeddings.weight[:, :h])
        x = drop(ln(x, e.LayerNorm, h), c.dropout)
        keep = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, T)
        hs, qkvs, atts = [x], [], []
        for li in m.layer_indices(cfg):
            L = m.encoder.layer[li]
            sa = L.attention.self
            q, k, v = (lin(x, mod, w, h) for mod in (sa.query, sa.key, sa.value))  # (B, T, A*d)
            qh, kh, vh = (t.view(B, T, a, d).transpose(1, 2) for t in (q, k, v))  # (B, A, T, d)
            probs = None
            if output_attentions:
                s = (qh @ kh.transpose(-1, -2)) / d**0.5  # (B, A, T, T)
                if keep is not None:
                    s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
                probs = torch.softmax(s, -1)
                ctx = drop(probs, c.attention_dropout) @ vh
            else:
                ctx = F.scaled_dot_product_attention(
                    qh, kh, vh, attn_mask=keep, dropout_p=c.attention_dropout if self.training else 0.0
                )
            ctx = ctx.transpose(1, 2).reshape(B, T, w)  # (B, T, A*d)
            o = L.attention.output
            x = ln(drop(lin(ctx, o.dense, h, w), c.dropout) + x, o.LayerNorm, h)
            z = F.gelu(lin(x, L.intermediate.dense, f, h))  # (B, T, f)
            o = L.output
            x = ln(drop(lin(z, o.dense, h, f), c.dropout) + x, o.LayerNorm, h)
            hs.append(x)
            qkvs.append((q, k, v))
            atts.append(probs)
        pooled = torch.tanh(lin(x[:, 0], m.pooler.dense, h, h))  # (B, h)
        return SuperBertOutput(
            x,
            pooled,
            tuple(hs) if output_hidden_states else None,
            tuple(qkvs) if output_qkv else None,
            tuple(atts) if output_attentions else None,
        )


class Budget:
    """Wall-clock budget of one benchmark process, counted from its start (import time)."""

    t0 = time.perf_counter()

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - Budget.t0

    def allows(self, estimate: float = 0.0) -> bool:
        return self.seconds is None or self.elapsed() + estimate <= self.seconds


def cuda_time(fn, warmup_ms: int = 5, rep_ms: int = 25, grad_to_none=None) -> tuple[float, float, float]:
    """(median, p20, p80) ms of fn with triton.testing.do_bench; call fn once before (compiles,
    autotunes), so do_bench's own estimate of the iteration count is not skewed by that."""
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    ms, lo, hi = do_bench(
        fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none
    )
    return float(ms), float(lo), float(hi)


def cuda_graph_time(fn, rep_ms: int = 15, grad_to_none=None) -> tuple[float, float, float]:
    """(median, p20, p80) ms of fn replayed from a CUDA graph (triton.testing.do_bench_cudagraph):
    the GPU time of its kernels without the CPU launch overhead (Python, autograd) that an eager
    call of a small shape is bound by. fn must already be warm (compiled, autotuned)."""
    from triton.testing import do_bench_cudagraph

    r = do_bench_cudagraph(fn, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return float(r[0]), float(r[1]), float(r[2])


def cuda_peak_mb(fn) -> float:
    """Peak memory (MiB) allocated by one call of fn above what was allocated before it
    (measured apart from do_bench, whose L2-flush buffer would count otherwise)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def busy_us(intervals) -> float:
    """Total length of the union of (start, end) intervals: overlapping ones (kernels on other
    streams, a memcpy beside a kernel) are counted once."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if e < s:
            raise ValueError(f"busy_us: interval ({s}, {e}) ends before it starts")
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0.0)


def device_events(events) -> list:
    """The profiler's device-side events (kernels, memcpy, memset: device_type CUDA), without
    the host-side ops and runtime calls that launched them."""
    cuda = torch.autograd.DeviceType.CUDA
    return [e for e in events if e.device_type == cuda]


def device_intervals(events) -> list:
    """(start, end) in us of the device-side events."""
    return [(e.time_range.start, e.time_range.end) for e in device_events(events)]


def profile_cuda(fn, calls: int = 1) -> list:
    """The torch.profiler events (CUDA activity) of `calls` calls of fn, synchronised."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return list(prof.events())


def _kernel_label(name: str, width: int = 48) -> str:
    """A kernel's name without the return type and template / argument lists, cut to `width`."""
    n = name[5:] if name.startswith("void ") else name
    for ch in "<(":
        n = n.split(ch, 1)[0]
    n = n.replace(",", " ").replace(";", " ").strip() or name[:width]
    return n if len(n) <= width else n[: width - 1] + "~"


def kernel_breakdown(events, calls: int = 1, top: int = 8) -> str:
    """'label xN us; ...': device time per call of each kernel (grouped by label, largest first;
    N launches per call), then the busy total: where a call's GPU time goes."""
    groups: dict = {}
    for e in device_events(events):
        g = groups.setdefault(_kernel_label(e.name), [0.0, 0])
        g[0] += e.time_range.end - e.time_range.start
        g[1] += 1
    items = sorted(groups.items(), key=lambda kv: -kv[1][0])
    parts = [f"{k} x{n / calls:g} {us / calls:.1f}us" for k, (us, n) in items[:top]]
    if len(items) > top:
        parts.append(f"+{len(items) - top} more {sum(v[0] for _, v in items[top:]) / calls:.1f}us")
    parts.append(f"busy {busy_us(device_intervals(events)) / calls:.1f}us")
    return "; ".join(parts)


def cuda_context_ok() -> bool:
    """False once a kernel has left the CUDA context unusable (illegal address, say): every later
    call would fail, so the benchmark stops and says which implementation broke it."""
    try:
        torch.cuda.synchronize()
        (torch.ones(4, device="cuda") * 2).sum().item()
        return True
    except Exception:  # noqa: BLE001  (any error here means the context is gone)
        return False


def context_lost(culprit: str) -> int:
    """Print the marker gpu_check.sh reads to rerun without `culprit`; exit status 3."""
    print(f"CONTEXT_LOST culprit={culprit}", flush=True)
    sys.stdout.flush()
    return 3


def median_time(fn, warmup: int = 2, reps: int = 5) -> tuple[float, float, float]:
    """(median, p20, p80) seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    q = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))]
    return statistics.median(ts), q(0.2), q(0.8)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc_bytes_fn():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def f():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd  # heap in use + mmapped chunks (large tensors)

    return f


_malloc_bytes = _malloc_bytes_fn()


class PeakCPUMemory(TorchDispatchMode):
    """Peak bytes allocated by glibc malloc above the start, sampled after every aten op
    (CPU tensors come from malloc/mmap; torch's CPU allocator does not cache)."""

    def __enter__(self):
        if _malloc_bytes is None:
            raise RuntimeError("PeakCPUMemory needs glibc's mallinfo2")
        self.base = self.peak = _malloc_bytes()
        self.traffic = 0  # bytes newly allocated by ops (sum of positive per-op deltas)
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = _malloc_bytes()
        out = func(*args, **(kwargs or {}))
        after = _malloc_bytes()
        self.traffic += max(0, after - before)
        self.peak = max(self.peak, after)
        return out

    @property
    def traffic_mb(self) -> float:
        return self.traffic / 2**20

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20
