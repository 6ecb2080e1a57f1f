"""Host time per transformer layer of the sliced ops: naive eager slicing vs our autograd Functions.

On a GPU at the paper's batch sizes the supernet step is bound by host work (Python, dispatch,
kernel launches), not by the kernels: on the H200 (bench/results/2026-11-27_gpu_h200_bench) a
base-space sandwich step took 0.19-0.27 s where its matrix products need a few tens of
milliseconds. This benchmark measures that host work on the CPU, with tensors so small that the
arithmetic is negligible next to it: a stack of L layers of

    y = sliced_linear(h, W, b, o, i [, gelu]);  h = sliced_layernorm(y, gamma, beta, residual=h)

forward, then one backward, per call (section "ops"); and (section "model") whole SuperBert
layers - q/k/v, attention, output projections, FFN, LayerNorms, as the trainer runs them - of a
tiny supernet (hidden 64, 4 heads of 16, FFN 128; subnet width 48, 3 heads, FFN 96; 2 x 4 tokens),
forward with the q/k/v outputs the relation losses read, then backward. Modes:
    naive   F.linear / F.gelu / F.layer_norm on slice views (PyTorch's own autograd nodes; the slice
            backward hands autograd full-size gradients): the baseline
    torch   autodistil.ops with backend "torch" (the shared autograd Function templates, dW/db and
            dgamma/dbeta written into the .grad slices; in the model, whatever the layer runs: since
            the fused Functions: q/k/v as one, the attention output projection + residual +
            LayerNorm as one, the whole FFN block as one)
In the model, naive is the same SuperBert under grad_mode_ctx("autograd"), where the torch backend
runs PyTorch's own ops on the slice views.
Modes alternate within every round (the machine's speed drifts; interleaving shares the drift);
a mode's figure is the median over rounds of the per-layer microseconds.

    python bench/host_overhead.py [--layers 24] [--rounds 15] [--section all|ops|model] [--out JSON]
        (default JSON: bench/results/<today>_host_overhead/host_overhead.json)

The JSON records which autodistil tree was measured (its path and git commit), so the same
script run with PYTHONPATH set to an older checkout gives the before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS  # noqa: E402

import autodistil  # noqa: E402
from autodistil import ops  # noqa: E402

MODES = ("naive", "torch")


def make_stack(layers: int, width: int, full: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    P = {
        "W": [(torch.randn(full, full, generator=g) * 0.1).requires_grad_() for _ in range(layers)],
        "b": [torch.zeros(full).requires_grad_() for _ in range(layers)],
        "g": [torch.ones(full).requires_grad_() for _ in range(layers)],
        "e": [torch.zeros(full).requires_grad_() for _ in range(layers)],
    }
    x0 = torch.randn(tokens, width, generator=g)

    def run(mode: str, gelu: bool) -> None:
        h = x0
        for k in range(layers):
            W, b, gm, be = P["W"][k], P["b"][k], P["g"][k], P["e"][k]
            if mode == "naive":
                y = F.linear(h, W[:width, :width], b[:width])
                if gelu:
                    y = F.gelu(y)
                h = F.layer_norm(y + h, (width,), gm[:width], be[:width], 1e-12)
            else:
                y = ops.sliced_linear(h, W, b, width, width, "gelu" if gelu else None, backend=mode)
                h = ops.sliced_layernorm(y, gm, be, width, 1e-12, h, backend=mode)
        h.float().sum().backward()

    return run, P


def make_model(layers: int, seed: int = 0):
    """run(mode, gelu) over a tiny SuperBert; `gelu` is ignored (the FFN always has its GELU)."""
    from autodistil.nn import SuperBert, SuperBertConfig
    from autodistil.ops.shared import grad_mode_ctx
    from autodistil.space import SubnetConfig

    torch.manual_seed(seed)
    c = SuperBertConfig(
        layers=layers, hidden=64, heads=4, ffn=128, head_dim=16, vocab_size=100, max_position=32
    )
    m = SuperBert(c, backend="torch").train()
    sub = SubnetConfig(layers=layers, hidden=48, ffn_ratio=2.0, heads=3)
    ids = torch.randint(1, 100, (2, 4), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, 4)

    def run(mode: str, gelu: bool) -> None:
        with grad_mode_ctx("autograd" if mode == "naive" else "inplace"):
            out = m(ids, mask, subnet=sub, output_qkv=True)
            (out.last_hidden_state.float().sum() + sum(t.float().sum() for t in out.qkv[-1])).backward()

    return run


def per_layer_us(fn, layers: int, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls / layers * 1e6


def _commit(path: Path) -> str:
    try:
        return (
            subprocess.run(
                ["git", "-C", str(path), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=48, help="active width (of a full 64)")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20, help="stack calls per mode per round")
    ap.add_argument("--section", choices=("all", "ops", "model"), default="all")
    day = time.strftime("%Y-%m-%d")
    ap.add_argument("--out", default=str(RESULTS / f"{day}_host_overhead" / "host_overhead.json"))
    a = ap.parse_args(argv)
    if min(a.layers, a.width, a.tokens, a.rounds, a.calls) < 1 or a.width > 64:
        ap.error("--layers, --tokens, --rounds, --calls must be >= 1 and --width in 1..64")
    torch.set_num_threads(1)
    runs = {}
    if a.section in ("all", "ops"):
        runs["ops"] = make_stack(a.layers, a.width, 64, a.tokens)[0]
    if a.section in ("all", "model"):
        runs["model"] = make_model(a.layers)
    cases = [
        (sec, amp, gelu)
        for sec in runs
        for amp in (False, True)
        for gelu in ((False, True) if sec == "ops" else (True,))
    ]
    samples = {(sec, amp, gelu, m): [] for sec, amp, gelu in cases for m in MODES}
    for sec, amp, gelu in cases:  # warm-up: allocator, dispatcher caches, lazy imports
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for m in MODES:
                per_layer_us(lambda: runs[sec](m, gelu), a.layers, 3)
    t_start = time.time()
    for r in range(a.rounds):
        for sec, amp, gelu in cases:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                for m in MODES if r % 2 == 0 else MODES[::-1]:
                    samples[(sec, amp, gelu, m)].append(
                        per_layer_us(lambda: runs[sec](m, gelu), a.layers, a.calls)
                    )
        print(f"round {r + 1}/{a.rounds}", flush=True)
    rows = []
    for sec, amp, gelu in cases:
        base = statistics.median(samples[(sec, amp, gelu, "naive")])
        for m in MODES:
            xs = sorted(samples[(sec, amp, gelu, m)])
            med = statistics.median(xs)
            rows.append(
                {
                    "section": sec,
                    "autocast_bf16": amp,
                    "gelu": gelu,
                    "mode": m,
                    "us_per_layer_median": round(med, 1),
                    "us_per_layer_p20": round(xs[int(0.2 * (len(xs) - 1))], 1),
                    "us_per_layer_p80": round(xs[int(0.8 * (len(xs) - 1))], 1),
                    "x_naive": round(med / base, 3),
                }
            )
    tree = Path(autodistil.__file__).resolve().parent.parent
    res = {
        "what": "host microseconds per layer, forward and backward, CPU, 1 thread, tensors too small for the "
        "arithmetic to count; section ops: sliced linear [+GELU] + sliced LayerNorm with residual; "
        "section model: whole SuperBert layers",
        "config": vars(a),
        "autodistil_tree": str(tree),
        "autodistil_commit": _commit(tree),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
        "seconds": round(time.time() - t_start, 1),
        "rows": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out)
    for r in rows:
        print(
            f"{r['section']:5} amp={r['autocast_bf16']!s:5} gelu={r['gelu']!s:5} {r['mode']:6} "
            f"{r['us_per_layer_median']:7.1f} us/layer "
            f"[{r['us_per_layer_p20']}, {r['us_per_layer_p80']}]  {r['x_naive']:.2f}x naive"
        )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
