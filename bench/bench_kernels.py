"""GPU kernel benchmarks, side by side in one run (needs a CUDA GPU; bf16, batch 32 x seq 128):

  sliced linear forward+backward (y, dX, dW into an fp32 gradient with beta = 1, db), at the
  layer shapes of the three paper subspaces' smallest and largest subnets:
      ours: ops.sliced_linear(x bf16, W fp32 master, b fp32) under torch.autocast(bf16), as the
            trainer calls it; dW lands in W.grad[:o, :i] (fp32). autodistil_triton reads the cached
            bf16 shadow of W (the default), autodistil_triton_cast loads fp32 tiles of W and casts
            them in registers (weight_operand("cast")); the Triton rows name the config chosen for
            each product (`triton_config`)
      (a) cublas_contiguous: cuBLAS on a ready contiguous bf16 copy Wc of the same sub-shape, written
          out op by op (no autograd): y = addmm(b, x, Wc^T), dX = dy @ Wc,
          gW(fp32) = addmm(gW, dy^T, x, out_dtype=fp32, beta=1), gb(fp32) += sum(dy)
      (a') cublas_cast_per_call: the same with the bf16 copy cast from the fp32 master slice inside
          every call (what reading an fp32 master costs cuBLAS): precision and kernel quality apart
      (b) torch_F.linear_on_slice: F.linear(x, W[:o, :i], b[:o]) under the same autocast with the
          fp32 master W, through autograd (its slice backward allocates a full-size gradient)
  attention forward+backward at d = 64, heads 7, 9, 12, with the SAME padding mask on both sides
  (the last 10% of keys of sequence 0 padded). Both sides get the model's inputs: q, k, v as
  head-split views (B, A, T, d) of (B, T, A*d) tensors, and the (B, T) integer mask, converted
  inside the timed call:
      ours (triton, cuda): ops.sliced_attention(q, k, v, key_mask (B, T))
      torch_sdpa: F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :].bool());
          the SDPA backend that ran with the mask is named in the `note` column

    python bench/bench_kernels.py [--out CSV] [--budget-s S] [--section all|linear|attention]
                                  [--resume] [--exclude IMPL ...]

Times: triton.testing.do_bench median and p20/p80 (ms, eager: includes the CPU launch overhead
of Python and autograd, which bounds these small shapes) after one warm-up call (which also does
Triton's bounded autotuning of a new shape), and the GPU time of the same call replayed from a
CUDA graph (triton.testing.do_bench_cudagraph; gpu_ms_*; a capture failure is noted in
graph_note); peak memory of one call above what was allocated before it; for the first 4
base-space linear shapes and every attention shape (--breakdown-shapes), one more call under
torch.profiler, once everything is timed, gives each kernel's device time (`kernels`: label,
launches, us per call, then the busy total), so a ratio below target says which kernel to work on.
Every row carries device name, driver, CUDA, torch and triton versions. The CSV is
rewritten after every shape, so a run cut off by its time box keeps what it measured.
Exit status: 0 done, 2 no GPU ("not measured"), 3 the CUDA context was lost (the culprit is
printed as "CONTEXT_LOST culprit=IMPL"; rerun with --resume --exclude IMPL)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    RESULTS,
    Budget,
    context_lost,
    cuda_context_ok,
    cuda_graph_time,
    cuda_peak_mb,  # noqa: E402
    cuda_time,
    device_events,
    device_info,
    kernel_breakdown,
    median_time,
    profile_cuda,
    write_csv,
)

from autodistil import ops  # noqa: E402
from autodistil.space import PAPER_SPACES  # noqa: E402

HEAD_DIM = 64
ATTN_HEADS = (7, 9, 12)
GRAPHS = True  # also time CUDA-graph replays (GPU time); --no-graphs turns it off
DEV = "cuda"  # "cpu" only for --device cpu: a dry run of every code path (small sizes; not a measurement)
PENDING: list = []  # (row, fn) to profile once everything is timed (--breakdown-shapes)


def linear_shapes():
    """(name, o, i) of the four sliced linears (qkv, attention output, FFN in, FFN out) of each
    paper subspace's smallest and largest subnet, deduplicated by (o, i): 24 shapes."""
    return sorted(_shapes_in_order())


def _shapes_in_order():
    out, seen = [], set()
    for s in PAPER_SPACES.values():
        for sub in (s.smallest(), s.largest()):
            h, w, f = sub.hidden, sub.heads * s.head_dim, sub.ffn
            for kind, o, i in (("qkv", w, h), ("attn-out", h, w), ("ffn-in", f, h), ("ffn-out", h, f)):
                if (o, i) not in seen:
                    seen.add((o, i))
                    out.append((f"{s.name}-{kind}", o, i))
    return out


def _full_shape(name: str, space_name: str) -> tuple[int, int]:
    """The supernet parameter a layer kind slices, at the subspace's maximum (its real size)."""
    s = PAPER_SPACES[space_name]
    H, W, Fm = int(s.hidden.high), int(s.heads.high) * s.head_dim, s.max_ffn
    kind = name.split("-", 1)[1]
    return {"qkv": (W, H), "attn-out": (H, W), "ffn-in": (Fm, H), "ffn-out": (H, Fm)}[kind]


def _round_robin(shapes):
    """Order shapes so a run cut off by its budget still covers every subspace and layer kind."""
    groups: dict = {}
    for sh in shapes:
        groups.setdefault(sh[0].split("-")[0], []).append(sh)
    lists = [groups[k] for k in sorted(groups)]
    out = []
    for j in range(max(len(g) for g in lists)):
        out += [g[j] for g in lists if j < len(g)]
    return out


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def sdpa_backend_used(fn) -> str:
    """Which SDPA implementation fn's call of F.scaled_dot_product_attention dispatched to
    (flash / efficient / cudnn / math / ...), read from the aten op it ran."""
    with _OpNames() as rec:
        fn()
    for n in rec.names:
        if "scaled_dot_product" in n and n != "scaled_dot_product_attention":
            for key in ("cudnn", "efficient", "flash", "math", "overrideable"):
                if key in n:
                    return key + ("_cpu" if n.endswith("_for_cpu") else "")
            return n
    return "unknown"


def _dw_accumulate(dtype):
    """The cuBLAS dW update gW(fp32) += dy^T @ x from bf16 operands with beta = 1, written in place
    when this torch has addmm's out_dtype overload; else an fp32 add of a bf16 product (noted)."""

    def inplace(gW, dyT, x):
        torch.addmm(gW, dyT, x, out_dtype=torch.float32, out=gW)

    def fallback(gW, dyT, x):
        gW.add_(dyT @ x)

    try:  # check it numerically once: a silently wrong reference would be worse than a slow one
        g = torch.randn(40, 24, device=DEV)
        a, b = torch.randn(40, 32, device=DEV, dtype=dtype), torch.randn(32, 24, device=DEV, dtype=dtype)
        want = g + a.float() @ b.float()
        inplace(g, a, b)
        if (g - want).abs().max().item() < 1e-2 * want.abs().max().item():
            return inplace, "dW: addmm(out_dtype=fp32, beta=1) in place"
    except (RuntimeError, TypeError, NotImplementedError):
        pass
    return fallback, "dW: FALLBACK low-precision mm + fp32 add (no addmm out_dtype here)"


def _row(info, a, op, shape, o, i, impl, note=""):
    return {
        **info,
        "op": op,
        "shape": shape,
        "o": o,
        "i": i,
        "tokens": a.batch * a.seq,
        "dtype": a.dtype,
        "impl": impl,
        "status": "ok",
        "ms_median": "",
        "ms_p20": "",
        "ms_p80": "",
        "peak_mem_mb": "",
        "max_abs_diff_vs_ref": "",
        "gpu_ms_median": "",
        "gpu_ms_p20": "",
        "gpu_ms_p80": "",
        "graph_note": "",
        "note": note,
        "kernels": "",
        "triton_config": "",
    }


def _skip_rows(info, a, op, shape, o, i, impls, done, emit):
    """Rows saying "skipped: time budget" for every implementation of a shape not measured yet."""
    for v in impls:
        if (shape, str(o), str(i), v) not in done:
            emit({**_row(info, a, op, shape, o, i, v), "status": "skipped: time budget"})


def _measure(row, fn, grad_to_none, check=None, breakdown=False):
    """Fill row with times and memory of fn; on an error record it and return False.
    On the CPU (a dry run of the code paths, not a measurement) the time of one call.
    breakdown (CUDA): one more call under torch.profiler, each kernel's device time in `kernels`."""
    try:
        if DEV == "cuda":
            ms, lo, hi = cuda_time(fn, grad_to_none=grad_to_none)
            mem = round(cuda_peak_mb(fn), 2)
        else:
            ms, lo, hi = (1e3 * t for t in median_time(fn, warmup=0, reps=1))
            mem = ""
        row.update(ms_median=round(ms, 5), ms_p20=round(lo, 5), ms_p80=round(hi, 5), peak_mem_mb=mem)
        if check is not None:
            row["max_abs_diff_vs_ref"] = f"{check():.3g}"
    except Exception as e:  # noqa: BLE001  (recorded in the CSV and the log, the run goes on)
        traceback.print_exc()
        row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return False
    if DEV == "cuda" and GRAPHS:
        try:  # GPU time: the same calls replayed from a CUDA graph (no CPU launch overhead)
            gm, glo, ghi = cuda_graph_time(fn, grad_to_none=grad_to_none)
            row.update(gpu_ms_median=round(gm, 5), gpu_ms_p20=round(glo, 5), gpu_ms_p80=round(ghi, 5))
        except Exception as e:  # noqa: BLE001  (eager times stand; the graph failure is noted)
            row["graph_note"] = (
                f"graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            )
            print(f"{row['impl']} {row['shape']}: {row['graph_note']}")
            if not cuda_context_ok():
                row["status"] = "error: CUDA context lost in graph capture"
                return False
    if DEV == "cuda" and breakdown:
        PENDING.append((row, fn))  # profiled after every timing (profile_pending)
    return True


def _breakdowns_wanted(a) -> bool:
    return DEV == "cuda" and a.breakdown_shapes > 0


def profile_pending(budget, save) -> None:
    """Where each pending call's GPU time goes, kernel by kernel (what to work on next): one
    profiled call each, after all timing, since a profiler session may leave CUPTI attached and
    slow down what is timed after it. No device event recorded is reported, not an empty row."""
    while PENDING:
        row, fn = PENDING.pop(0)
        if not budget.allows(2.0):
            row["kernels"] = "not profiled: time budget"
        else:
            try:
                evs = profile_cuda(fn)
                row["kernels"] = (
                    kernel_breakdown(evs) if device_events(evs) else "profile failed: no device events"
                )
            except Exception as e:  # noqa: BLE001  (no CUPTI, ...: the times stand)
                row["kernels"] = (
                    f"profile failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                )
                if not cuda_context_ok():
                    print(
                        f"the CUDA context was lost while profiling {row['impl']} {row['shape']}: "
                        f"no further profiling"
                    )
                    PENDING.clear()
        save()


def _operand_note(be: str) -> str:
    if be.endswith("_cast"):
        return "; forward/dX read fp32 tiles of W cast in registers"
    return "; forward/dX read the cached bf16 shadow of W" if "triton" in be else ""


def _triton_configs(n, o, i, weight_dtype) -> str:
    """'fwd ...; dx ...; dw ...': the Triton configs chosen for the three products of this shape."""
    from autodistil.kernels.sliced_linear import chosen_configs

    got = chosen_configs(n, o, i, weight_dtype)
    return "; ".join(f"{k} {got[k]}" for k in ("fwd", "dx", "dw") if k in got)


def bench_linear(a, info, impls, dt, budget, done, emit):
    N = a.batch * a.seq
    dw_update, dw_note = _dw_accumulate(dt)
    print(dw_note)
    shapes = [sh for sh in _round_robin(_shapes_in_order()) if a.shapes is None or sh[0] in a.shapes][
        : a.max_shapes
    ]
    # a kernel breakdown for the first --breakdown-shapes shapes of the base space (the largest layers)
    profiled = {sh for sh in shapes if sh[0].startswith("base-")}
    profiled = set(sorted(profiled, key=shapes.index)[: a.breakdown_shapes])
    for k, (name, o, i) in enumerate(shapes):
        if not budget.allows():
            print(f"time budget reached: {len(shapes) - k} linear shapes not measured")
            for n2, o2, i2 in shapes[k:]:
                _skip_rows(info, a, "sliced_linear_fwd_bwd", n2, o2, i2, impls, done, emit)
            break
        O, I = _full_shape(name, name.split("-")[0])
        g = torch.Generator(device=DEV).manual_seed(k)
        W = (torch.randn(O, I, device=DEV, generator=g) * 0.02).requires_grad_()  # fp32 master, full size
        b = (torch.randn(O, device=DEV, generator=g) * 0.02).requires_grad_()
        x = torch.randn(N, i, device=DEV, dtype=dt, generator=g).requires_grad_()  # (N, i) bf16 activation
        dy = torch.randn(N, o, device=DEV, dtype=dt, generator=g)  # (N, o)
        Wc = W.detach()[:o, :i].to(dt).contiguous()  # (a): contiguous bf16 copy of the sub-shape
        bc = b.detach()[:o].to(dt).contiguous()
        gW = torch.zeros(o, i, device=DEV)  # fp32 dW, beta = 1
        gb = torch.zeros(o, device=DEV)
        dyT = dy.t()  # a transposed view: cuBLAS takes it without a copy
        xd = x.detach()
        with torch.no_grad():
            y_ref = torch.addmm(bc, x, Wc.t())

        def cublas():
            y = torch.addmm(bc, xd, Wc.t())  # (N, o)
            dx = dy @ Wc  # (N, i)
            dw_update(gW, dyT, xd)  # gW += dy^T x  (fp32, beta = 1)
            gb.add_(dy.sum(0, dtype=torch.float32))
            return y, dx

        def cublas_cast():  # the bf16 operand cast from the fp32 master slice in every call
            w16, b16 = W.detach()[:o, :i].to(dt), b.detach()[:o].to(dt)
            y = torch.addmm(b16, xd, w16.t())
            dx = dy @ w16
            dw_update(gW, dyT, xd)
            gb.add_(dy.sum(0, dtype=torch.float32))
            return y, dx

        def torch_slice():
            with torch.autocast(DEV, dtype=dt):
                y = F.linear(x, W[:o, :i], b[:o])
            y.backward(dy)

        def operand(be):  # "triton_cast": the Triton backend loading fp32 tiles of W (not the bf16 shadow)
            if be == "triton_cast":
                from autodistil.kernels import weight_operand

                return weight_operand("cast")
            return contextlib.nullcontext()

        def ours(be):
            def fn():
                with operand(be), torch.autocast(DEV, dtype=dt):
                    y = ops.sliced_linear(x, W, b, o, i, None, backend=be.split("_")[0])
                y.backward(dy)

            return fn

        def diff(be):
            def fn():
                with operand(be), torch.no_grad(), torch.autocast(DEV, dtype=dt):
                    y = ops.sliced_linear(x.detach(), W, b, o, i, None, backend=be.split("_")[0])
                return (y.float() - y_ref.float()).abs().max().item()

            return fn

        variants = {
            "cublas_contiguous": (cublas, None, f"a ready bf16 copy of the slice; {dw_note}"),
            "cublas_cast_per_call": (
                cublas_cast,
                None,
                f"bf16 cast of the fp32 master slice per call; {dw_note}",
            ),
            "torch_F.linear_on_slice": (torch_slice, None, "autocast bf16, fp32 master W, autograd"),
        }
        for be in impls:
            if be.startswith("autodistil_"):
                variants[be] = (
                    ours(be.split("_", 1)[1]),
                    diff(be.split("_", 1)[1]),
                    "autocast bf16, fp32 master W, dW into W.grad[:o, :i]" + _operand_note(be),
                )
        line = {}
        for v, (fn, check, note) in variants.items():
            if v not in impls or (name, str(o), str(i), v) in done:
                continue
            W.grad = b.grad = None
            r = _row(info, a, "sliced_linear_fwd_bwd", name, o, i, v, note)
            ok = _measure(r, fn, [x], check, breakdown=(name, o, i) in profiled)
            if ok and v.startswith("autodistil_triton"):
                r["triton_config"] = _triton_configs(N, o, i, torch.float32 if v.endswith("_cast") else dt)
            emit(r)
            line[v] = f"{r['ms_median']} (gpu {r['gpu_ms_median'] or '-'})" if ok else r["status"]
            if not ok and DEV == "cuda" and not cuda_context_ok():
                return context_lost(v)
        print(f"linear {name} o={o} i={i} (full {O}x{I}):", line, flush=True)
    return 0


def bench_attention(a, info, impls, dt, budget, done, emit):
    B, T = a.batch, a.seq
    mask = torch.ones(B, T, device=DEV, dtype=torch.long)  # (B, T): what the model passes, 1 = attend
    mask[0, T - max(1, T // 10) :] = 0  # the last 10% of sequence 0 is padding
    for heads in a.heads:
        shape = f"heads{heads}-d{HEAD_DIM}-T{T}"
        if not budget.allows():
            print(f"time budget reached: attention {shape} not measured")
            _skip_rows(info, a, "attention_fwd_bwd", shape, heads, HEAD_DIM, impls, done, emit)
            continue
        g = torch.Generator(device=DEV).manual_seed(100 + heads)
        leaves = [
            torch.randn(B, T, heads * HEAD_DIM, device=DEV, dtype=dt, generator=g).requires_grad_()
            for _ in range(3)
        ]  # (B, T, A*d): the projections' outputs
        do = torch.randn(B, heads, T, HEAD_DIM, device=DEV, dtype=dt, generator=g)

        def views(detach=False):  # the model's head-split views (B, A, T, d)
            return [(t.detach() if detach else t).view(B, T, heads, HEAD_DIM).transpose(1, 2) for t in leaves]

        def sdpa_fwd(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :].bool())

        with torch.no_grad():
            ref = sdpa_fwd(*views(True))

        def sdpa():
            sdpa_fwd(*views()).backward(do)

        def ours(be):
            def fn():
                with torch.autocast(DEV, dtype=dt):
                    out, _ = ops.sliced_attention(*views(), mask, backend=be)
                out.backward(do)

            return fn

        def diff(be):
            def fn():
                with torch.no_grad():
                    out, _ = ops.sliced_attention(*views(True), mask, backend=be)
                return (out.float() - ref.float()).abs().max().item()

            return fn

        sdpa_kind = sdpa_backend_used(lambda: sdpa_fwd(*views(True)))
        variants = {"torch_sdpa": (sdpa, None, f"SDPA backend with the bool mask: {sdpa_kind}")}
        for be in impls:
            if be.startswith("autodistil_"):
                variants[be] = (ours(be.split("_", 1)[1]), diff(be.split("_", 1)[1]), "key_mask (B, T)")
        line = {}
        for vname, (fn, check, note) in variants.items():
            if vname not in impls or (shape, str(heads), str(HEAD_DIM), vname) in done:
                continue
            r = _row(info, a, "attention_fwd_bwd", shape, heads, HEAD_DIM, vname, note)
            ok = _measure(r, fn, leaves, check, breakdown=a.breakdown_shapes > 0)
            emit(r)
            line[vname] = f"{r['ms_median']} (gpu {r['gpu_ms_median'] or '-'})" if ok else r["status"]
            if not ok and DEV == "cuda" and not cuda_context_ok():
                return context_lost(vname)
        print(f"attention {shape} ({variants['torch_sdpa'][2]}):", line, flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: dry run of the code paths with small --batch/--seq (fp16 for the Triton interpreter)",
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "kernels_gpu.csv"), help="CSV path")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new shape after this many seconds")
    ap.add_argument("--section", default="all", choices=["all", "linear", "attention"])
    ap.add_argument(
        "--resume", action="store_true", help="keep the rows already in --out and skip what they measured"
    )
    ap.add_argument(
        "--exclude", nargs="*", default=[], help="implementations to leave out (e.g. autodistil_cuda)"
    )
    ap.add_argument("--max-shapes", type=int, default=None, help="measure only the first N linear shapes")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph (GPU time) measurement")
    ap.add_argument(
        "--shapes", nargs="+", default=None, help="measure only these linear shapes (names, e.g. tiny-qkv)"
    )
    ap.add_argument("--heads", type=int, nargs="+", default=list(ATTN_HEADS), help="attention head counts")
    ap.add_argument(
        "--breakdown-shapes",
        type=int,
        default=4,
        help="CUDA: profile one more call of every implementation on the first N base-space linear "
        "shapes and every attention shape: each kernel's device time in the `kernels` column "
        "(0: none)",
    )
    a = ap.parse_args(argv)
    global DEV, GRAPHS
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (results: not measured)")
        return 2
    DEV = a.device
    GRAPHS = not a.no_graphs
    budget = Budget(a.budget_s)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    info = device_info(DEV)
    status = ops.backend_status()
    print("backends:", status, flush=True)
    rows, done = [], set()
    out = Path(a.out)
    if a.resume and out.is_file():
        with open(out, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("status") == "ok" or r.get("status", "").startswith("error"):
                    rows.append(r)
                    done.add((r["shape"], str(r["o"]), str(r["i"]), r["impl"]))
    ours = []
    for be in ("triton", "cuda"):
        if status[be] == "ok":
            ours.append(f"autodistil_{be}")
        else:
            print(f"backend {be}: not measured ({status[be]})")
    # the cast variant runs the same kernel: left out with autodistil_triton (e.g. after it broke the context)
    tri = "autodistil_triton" in ours and "autodistil_triton" not in a.exclude
    cast = ["autodistil_triton_cast"] if tri else []
    lin = [
        v
        for v in ["cublas_contiguous", "cublas_cast_per_call", "torch_F.linear_on_slice", *ours, *cast]
        if v not in a.exclude
    ]
    att = [v for v in ["torch_sdpa", *ours] if v not in a.exclude]
    for v in a.exclude:
        if v.startswith("autodistil_"):
            rows.append(
                {
                    **_row(info, a, "all", "all", "", "", v),
                    "status": "excluded (--exclude; gpu_check.sh excludes what broke the CUDA context)",
                }
            )

    def emit(r):
        rows.append(r)
        write_csv(out, rows)

    rc = 0
    try:
        if a.section in ("all", "linear"):
            # with both sections under one budget, the linear shapes stop at 65 % of it so the
            # attention rows (compiled and timed after them) are measured too
            lin_budget = Budget(0.65 * a.budget_s) if (a.section == "all" and a.budget_s) else budget
            rc = bench_linear(a, info, lin, dt, lin_budget, done, emit)
        if rc == 0 and a.section in ("all", "attention"):
            # the last 10 % is left to the kernel breakdowns (profile_pending)
            att_budget = Budget(0.9 * a.budget_s) if (a.budget_s and _breakdowns_wanted(a)) else budget
            rc = bench_attention(a, info, att, dt, att_budget, done, emit)
        if rc == 0:
            profile_pending(budget, lambda: write_csv(out, rows))
    except KeyboardInterrupt:  # the time box's SIGINT: what was measured is already written
        print("interrupted by the time box; rows so far are in", out)
        return 124
    print(write_csv(out, rows))
    return rc


if __name__ == "__main__":
    sys.exit(main())
