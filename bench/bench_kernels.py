"""GPU kernel benchmarks, side by side in one run (needs a CUDA GPU; bf16 by default):

  sliced linear forward+backward, for the layer shapes of the three paper subspaces
  (hidden 128..640, FFN up to 4x, seq 128, batch 32):
      ours (triton, cuda)  vs  (a) cuBLAS on a contiguous copy of the same sub-shape
                           vs  (b) F.linear on the slice W[:o, :i] (PyTorch's autograd)
  attention forward+backward at head dim 64, heads 7..12:
      ours (triton, cuda)  vs  (c) PyTorch SDPA (its FlashAttention backend)

    python bench/bench_kernels.py [--dtype bf16] [--batch 32] [--seq 128]

Times are triton.testing.do_bench medians (ms, with 20/80% quantiles) and peak memory; rows
carry device name, driver/CUDA, torch and triton versions. Writes bench/results/kernels_gpu.csv."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import device_info, write_csv  # noqa: E402

from autodistil import ops  # noqa: E402
from autodistil.space import PAPER_SPACES  # noqa: E402


def linear_shapes():
    """(name, o, i) of every sliced linear in the three paper subspaces' layers (deduplicated)."""
    seen = set()
    for s in PAPER_SPACES.values():
        for h in s.hidden.values:
            for a in (s.heads.low, s.heads.high):
                seen.add((f"{s.name}-qkv", a * 64, h))
                seen.add((f"{s.name}-attn-out", h, a * 64))
            for r in (s.ffn_ratio.low, s.ffn_ratio.high):
                f = int(r * h)
                seen.add((f"{s.name}-ffn-in", f, h))
                seen.add((f"{s.name}-ffn-out", h, f))
    return sorted(seen)


def bench(fn, reset=True):
    from triton.testing import do_bench
    torch.cuda.synchronize()
    if reset:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms, lo, hi = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return ms, lo, hi, (torch.cuda.max_memory_allocated() - base) / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (results: not measured)")
        return 2
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    dev = "cuda"
    info = device_info(dev)
    status = ops.backend_status()
    backends = [b for b in ("triton", "cuda") if status[b] == "ok"]
    rows = []
    N = a.batch * a.seq
    W = torch.randn(3072, 3072, device=dev, dtype=dt) * 0.02   # full-size supernet weight (max over spaces)
    bias = torch.zeros(3072, device=dev, dtype=dt)
    for name, o, i in linear_shapes():
        x = torch.randn(N, i, device=dev, dtype=dt, requires_grad=True)
        dy = torch.randn(N, o, device=dev, dtype=dt)
        Wc = W[:o, :i].contiguous().requires_grad_()               # (a) cuBLAS on a contiguous copy
        Wp = W.clone().requires_grad_()                            # full parameter for (b) and ours
        bp = bias.clone().requires_grad_()

        def cublas():
            y = F.linear(x, Wc, bp[:o].detach())
            y.backward(dy)

        def torch_slice():
            y = F.linear(x, Wp[:o, :i], bp[:o])
            y.backward(dy)

        variants = {"cublas_contiguous": cublas, "torch_F.linear_on_slice": torch_slice}
        for b in backends:
            def ours(b=b):
                y = ops.sliced_linear(x, Wp, bp, o, i, None, backend=b)
                y.backward(dy)
            variants[f"autodistil_{b}"] = ours
        for v, fn in variants.items():
            Wp.grad = None
            ms, lo, hi, mem = bench(fn)
            rows.append({**info, "op": "sliced_linear_fwd_bwd", "shape": name, "o": o, "i": i, "tokens": N,
                         "dtype": a.dtype, "impl": v, "ms_median": ms, "ms_p20": lo, "ms_p80": hi,
                         "peak_mem_mb": mem})
        print(name, o, i, {r["impl"]: round(r["ms_median"], 4) for r in rows[-len(variants):]})
    for heads in (7, 9, 12):
        q, k, v = (torch.randn(a.batch, heads, a.seq, 64, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        mask = torch.ones(a.batch, a.seq, device=dev, dtype=torch.long)

        def sdpa():
            F.scaled_dot_product_attention(q, k, v).backward(do)

        variants = {"torch_sdpa": sdpa}
        for b in backends:
            def ours(b=b):
                o_, _ = ops.sliced_attention(q, k, v, mask, backend=b)
                o_.backward(do)
            variants[f"autodistil_{b}"] = ours
        for vname, fn in variants.items():
            ms, lo, hi, mem = bench(fn)
            rows.append({**info, "op": "attention_fwd_bwd", "shape": f"heads{heads}-d64", "o": heads, "i": 64,
                         "tokens": N, "dtype": a.dtype, "impl": vname, "ms_median": ms, "ms_p20": lo,
                         "ms_p80": hi, "peak_mem_mb": mem})
        print("attention", heads, {r["impl"]: round(r["ms_median"], 4) for r in rows[-len(variants):]})
    print(write_csv("kernels_gpu.csv", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
