"""Supernet training step on CPU: in-place grad slices (our torch backend) vs naive
F.linear(x, W[:o, :i]) whose slice backward allocates a full-size zero tensor per use.

    python bench/bench_supernet_memory.py [--space base] [--batch 4] [--seq 128]

Writes bench/results/<today>_supernet_memory_cpu/supernet_memory_cpu_<space>.csv (or --out): peak
extra memory of one sandwich step, the backward's peak over its start and its allocation traffic,
and the step time (median of repeats), both modes in one run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, PeakCPUMemory, device_info, median_time, naive_slicing, write_csv  # noqa: E402

from autodistil.distill.train import sandwich  # noqa: E402
from autodistil.nn import SuperBert, SuperBertConfig  # noqa: E402
from autodistil.space import PAPER_SPACES  # noqa: E402
from autodistil.ops.shared import grad_mode_ctx  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="base", choices=sorted(PAPER_SPACES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None, help="CSV path (default: see above)")
    a = ap.parse_args(argv)
    space = PAPER_SPACES[a.space]
    torch.manual_seed(0)
    model = SuperBert(SuperBertConfig.for_spaces(space))
    ids = torch.randint(0, 30522, (a.batch, a.seq))
    mask = torch.ones_like(ids)
    members = [m for _, m in sandwich(space, 0, 0, 2)]

    def step(watch_backward=None):
        for cfg in members:
            out = model(ids, mask, subnet=cfg, output_qkv=True)
            loss = out.last_hidden_state.float().pow(2).mean() / len(members)
            if watch_backward is None:
                loss.backward()
            else:
                with PeakCPUMemory() as pm:
                    loss.backward()
                watch_backward.append(pm)

    rows = []
    for mode, label in (("naive", "naive F.linear(x, W[:o,:i])"), ("inplace", "autodistil torch backend")):
        with naive_slicing(model) if mode == "naive" else grad_mode_ctx("inplace"):
            model.zero_grad(set_to_none=False)
            step()  # grads allocated once
            with PeakCPUMemory() as pm:
                step()
            bw = []
            step(bw)
            t, lo, hi = median_time(step, warmup=1, reps=a.reps)
        rows.append(
            {
                **device_info("cpu"),
                "space": a.space,
                "batch": a.batch,
                "seq": a.seq,
                "sandwich": ";".join(m.short() for m in members),
                "mode": label,
                "step_peak_extra_mb": round(pm.peak_mb, 1),
                "backward_peak_over_start_mb": round(max(b.peak_mb for b in bw), 1),
                "backward_alloc_traffic_mb": round(sum(b.traffic_mb for b in bw), 1),
                "step_s_median": round(t, 4),
                "step_s_p20": round(lo, 4),
                "step_s_p80": round(hi, 4),
            }
        )
        print(
            {
                k: rows[-1][k]
                for k in (
                    "mode",
                    "step_peak_extra_mb",
                    "backward_peak_over_start_mb",
                    "backward_alloc_traffic_mb",
                    "step_s_median",
                )
            }
        )
    day = time.strftime("%Y-%m-%d")
    out = a.out or RESULTS / f"{day}_supernet_memory_cpu" / f"supernet_memory_cpu_{a.space}.csv"
    print(write_csv(out, rows))


if __name__ == "__main__":
    main()
