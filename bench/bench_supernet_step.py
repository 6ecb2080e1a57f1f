"""One supernet training step, end to end, per slicing implementation (the real trainer):

  autodistil.distill.train.SupernetTrainer.train_step: a sandwich of 4 subnets (largest, smallest,
  2 random) of a paper subspace (base by default), each distilled from a frozen, randomly
  initialised BERT-base-shaped teacher (transformers BertModel from a BertConfig, no download,
  wrapped in autodistil.nn.TeacherNet) with the relation loss, bf16 autocast on CUDA, AdamW,
  gradient clipping; batch 32 x seq 128, the last 10% of sequence 0 padded.

Modes, all on the same model, optimizer state, batches and sandwiches:
  naive   eager slicing through PyTorch autograd (common.naive_slicing: F.linear / F.embedding /
          F.layer_norm on slices, full-size slice gradients)
  torch, triton, cuda   the backends, gradients written into the grad slices ("inplace")

Per mode: model and optimizer state are restored to one snapshot (taken after a first step, so
the optimizer state exists), `--steps` warm-up steps run (compiles, autotuning; their first loss
is compared across modes), then the same steps run again timed, `--repeats` times (the same
sandwiches each time, so no new shape is compiled). Reported: tokens/s of the median pass
(sequences x seq x sandwich members / wall time, synchronised) with the slowest and fastest
pass's, and the peak memory above what is allocated after warm-up (model, grads, optimizer
state, teacher: `base_mb`, also reported). On CUDA, once every mode is timed (a profiler session
may leave CUPTI attached and slow down what is timed after it), one more pass per mode over the
same steps runs under torch.profiler (CUDA activity) for the GPU's busy time per step: the union
of its kernel, memcpy and memset intervals (`gpu_busy_ms_per_step`), and that time's share of the
mode's median step (`gpu_busy_share`): well under 1 means the step waits on the host (Python,
autograd, launches), not on the GPU, and a backend beats naive slicing only by spending less host
time. A pass that records no device event is reported as an error (`gpu_busy_error`).
Target (issue 12/13): every backend >= 1.2x the naive tokens/s with lower extra peak memory.

    python bench/bench_supernet_step.py [--out CSV] [--budget-s S]       # GPU
    python bench/bench_supernet_step.py --device cpu --space tiny --batch 2 --seq 16 --steps 1 \\
        --teacher-layers 2 --vocab 2000 --modes naive torch               # CPU smoke test

Exit status: 0 done, 2 no GPU ("not measured"), 3 the CUDA context was lost (culprit printed as
"CONTEXT_LOST culprit=MODE"; rerun with --resume --exclude MODE)."""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (RESULTS, Budget, PeakCPUMemory, busy_us, context_lost, cuda_context_ok,  # noqa: E402
                    device_info, device_intervals, naive_slicing, profile_cuda, write_csv)

from autodistil import ops  # noqa: E402
from autodistil.data.text import TokenBlocks  # noqa: E402
from autodistil.distill.train import SupernetTrainer, TrainConfig  # noqa: E402
from autodistil.nn import TeacherNet  # noqa: E402
from autodistil.ops.shared import grad_mode_ctx  # noqa: E402
from autodistil.space import PAPER_SPACES, TeacherShape  # noqa: E402

MODES = ("naive", "torch", "cuda", "triton")  # Triton last: its first steps compile and autotune


def build_trainer(a, device: str) -> SupernetTrainer:
    """The real trainer with a random BERT-base-shaped teacher and random token blocks."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    tc = BertConfig(num_hidden_layers=a.teacher_layers, vocab_size=a.vocab)  # BERT-base: 768, 12 heads of 64
    hf = BertModel(tc)
    teacher = TeacherNet(hf, TeacherShape(tc.num_hidden_layers, tc.hidden_size, tc.num_attention_heads,
                                          tc.intermediate_size))
    del hf
    n = 4 * a.batch
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(min(1000, tc.vocab_size // 2), tc.vocab_size, (n, a.seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, a.seq - max(1, a.seq // 10):] = 0
    ids[0][mask[0] == 0] = tc.pad_token_id
    data = TokenBlocks(ids, mask)
    cfg = TrainConfig(spaces=(a.space,), paper_spaces=True, seq_len=a.seq, batch_size=a.batch, steps=1_000_000,
                      warmup_steps=0, n_random=2, init="teacher", precision=a.precision, backend="torch",
                      device=device, eval_every=10**9, ckpt_every=10**9)
    out = Path(tempfile.mkdtemp(prefix="supernet_step_"))  # the trainer writes nothing here in train_step
    meta = {"name": "random-bert-base", "sha256": None}
    return SupernetTrainer(cfg, PAPER_SPACES[a.space], teacher, meta, data, data, out)


def _snapshot(tr):
    to_cpu = lambda sd: {k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v))
                         for k, v in sd.items()}
    opt = tr.opt.state_dict()
    return {"model": to_cpu(tr.model.state_dict()),
            "opt": {"state": {k: to_cpu(s) for k, s in opt["state"].items()},
                    "param_groups": copy.deepcopy(opt["param_groups"])},
            "sched": copy.deepcopy(tr.sched.state_dict())}


def _restore(tr, snap):
    tr.model.load_state_dict(snap["model"])
    tr.opt.load_state_dict(snap["opt"])
    tr.sched.load_state_dict(snap["sched"])
    tr.opt.zero_grad(set_to_none=False)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _in_mode(tr, mode: str, snap):
    """The trainer set up for `mode` (naive slicing, or a backend with in-place gradients), model and
    optimizer restored to the snapshot, step 0; the model's backend back to torch on exit."""
    model = tr.model
    ctx = naive_slicing(model) if mode == "naive" else grad_mode_ctx("inplace")
    if mode != "naive":
        model.backend = mode
    try:
        with ctx:
            _restore(tr, snap)
            tr.step = 0
            yield
    finally:
        model.backend = "torch"


def gpu_busy(tr, mode: str, snap, a) -> dict:
    """The GPU's busy time per step in one profiled pass over the timed steps of `mode` (from the
    snapshot again, the same sandwiches: nothing new compiles). Run after every mode is timed: a
    profiler session can leave CUPTI attached and slow down what is timed after it. No device
    event recorded is an error, not an idle GPU."""
    with _in_mode(tr, mode, snap):
        iv = device_intervals(profile_cuda(tr.train_step, a.steps))
    if not iv:
        raise RuntimeError("the profiler recorded no device events")
    return {"gpu_busy_ms_per_step": round(busy_us(iv) / 1000.0 / a.steps, 3)}


def run_mode(tr, mode: str, snap, a, device: str) -> dict:
    """Warm-up steps 0..n-1 from the snapshot, then the same steps timed; tokens/s and memory."""
    members = 2 + tr.cfg.n_random
    with _in_mode(tr, mode, snap):
        t_warm = time.perf_counter()
        warm = [tr.train_step() for _ in range(a.steps)]
        _sync(device)
        t_warm = time.perf_counter() - t_warm
        base = torch.cuda.memory_allocated() if device == "cuda" else 0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        passes = []
        for _ in range(a.repeats):
            tr.step = 0
            t0 = time.perf_counter()
            for _ in range(a.steps):
                tr.train_step()
            _sync(device)
            passes.append(time.perf_counter() - t0)
        passes.sort()
        dt = statistics.median(passes)
        if device == "cuda":
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:  # CPU: glibc heap peak of one more step above its start (a smoke-test figure)
            tr.step = 0
            with PeakCPUMemory() as pm:
                tr.train_step()
            extra = pm.peak_mb
    first = warm[0]
    tokens = a.steps * members * a.batch * a.seq
    return {"status": "ok", "tokens_per_s": round(tokens / dt, 1), "passes": len(passes),
            "tokens_per_s_slowest": round(tokens / passes[-1], 1), "tokens_per_s_fastest": round(tokens / passes[0], 1),
            "step_s": round(dt / a.steps, 4), "extra_peak_mb": round(extra, 1), "base_mb": round(base / 2**20, 1),
            "warmup_s": round(t_warm, 2), "loss_step0": round(first["loss"], 6),
            "member_losses_step0": ";".join(f"{k}={v:.6f}" for k, v in first["members"].items()),
            "sandwich_step0": ";".join(first["subnets"].values()), "finite": all(
                torch.isfinite(torch.tensor(w["loss"])).item() for w in warm)}


def profile_modes(tr, snap, a, rows, budget, save) -> None:
    """After all timing: each measured mode's profiled pass (gpu_busy) into its row, while the
    budget allows (a pass costs about one timed pass plus the profiler's post-processing)."""
    for r in rows:
        if not budget.allows(3 * float(r["step_s"]) * a.steps + 2.0):
            r["gpu_busy_error"] = "not profiled: time budget"
            save()
            continue
        try:
            r.update(gpu_busy(tr, r["mode"], snap, a))
            r["gpu_busy_share"] = round(r["gpu_busy_ms_per_step"] / (1000.0 * float(r["step_s"])), 3)
        except Exception as e:  # noqa: BLE001  (no CUPTI, ...: the timings stand)
            traceback.print_exc()
            r["gpu_busy_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if not cuda_context_ok():
                print(f"the CUDA context was lost while profiling {r['mode']}: no further profiling")
                save()
                return
        save()
        print(f"{r['mode']}: GPU busy {r.get('gpu_busy_ms_per_step', '-')} ms per step of "
              f"{1000 * float(r['step_s']):.1f} ({r.get('gpu_busy_share', r.get('gpu_busy_error'))})", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--space", default="base", choices=sorted(PAPER_SPACES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="warm-up steps, then as many timed steps, per mode")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over those steps (median reported)")
    ap.add_argument("--teacher-layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=30522, help="vocabulary size (smaller only for a quick smoke test)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 autocast on CUDA, fp32 on CPU (the trainer's rule)")
    ap.add_argument("--modes", nargs="+", default=None, choices=MODES,
                    help="default: all four on CUDA, naive and torch on CPU")
    ap.add_argument("--no-gpu-busy", action="store_true",
                    help="CUDA: skip the profiled pass that measures the GPU's busy time per step")
    ap.add_argument("--out", default=None, help="CSV path (default bench/results/supernet_step_<device>.csv)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new mode after this many seconds")
    ap.add_argument("--resume", action="store_true", help="keep the modes already measured in --out")
    ap.add_argument("--exclude", nargs="*", default=[], choices=MODES)
    a = ap.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.seq < 2 or a.repeats < 1:
        ap.error("--steps, --repeats and --batch must be >= 1 and --seq >= 2")
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_supernet_step: needs a CUDA GPU (results: not measured); --device cpu runs the smoke test")
        return 2
    budget = Budget(a.budget_s)
    out = Path(a.out) if a.out else RESULTS / f"supernet_step_{a.device}.csv"
    modes = [m for m in (a.modes or (MODES if a.device == "cuda" else ("naive", "torch"))) if m not in a.exclude]
    status = ops.backend_status()
    print("backends:", status, flush=True)
    rows, done = [], set()
    if a.resume and out.is_file():
        with open(out, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("status") == "ok" or r.get("status", "").startswith("error")]
        done = {r["mode"] for r in rows}
    info = {**device_info(a.device), "space": a.space, "batch": a.batch, "seq": a.seq, "sandwich": 4,
            "steps_timed": a.steps, "teacher": f"random BERT-base shape, {a.teacher_layers} layers, vocab {a.vocab}"}
    for m in a.exclude:
        rows.append({**info, "mode": m, "status": "excluded (--exclude; gpu_check.sh excludes what broke the CUDA context)"})

    def emit(r):
        rows.append(r)
        write_csv(out, rows)

    t_build = time.perf_counter()
    tr = build_trainer(a, a.device)
    tr.step = 10**6  # a first step (another sandwich) creates grads and the optimizer state
    tr.train_step()
    _sync(a.device)
    snap = _snapshot(tr)
    print(f"trainer ready in {time.perf_counter() - t_build:.1f}s: supernet {tr.model.config}", flush=True)
    est = 0.0
    timed = []  # the rows this process measured
    try:
        for mode in modes:
            if mode in done:
                continue
            row = {**info, "mode": mode, "backend": "torch" if mode == "naive" else mode,
                   "grad_delivery": "autograd (full-size slice grads)" if mode == "naive" else "inplace"}
            if mode != "naive" and status[mode] != "ok":
                emit({**row, "status": f"unavailable: {status[mode]}"})
                continue
            if not budget.allows(est):
                emit({**row, "status": "skipped: time budget"})
                continue
            t = time.perf_counter()
            try:
                row.update(run_mode(tr, mode, snap, a, a.device))
            except Exception as e:  # noqa: BLE001  (recorded; the other modes still run)
                traceback.print_exc()
                row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            est = time.perf_counter() - t
            emit(row)
            timed.append(row)
            print({k: row.get(k) for k in ("mode", "status", "tokens_per_s", "extra_peak_mb", "base_mb", "loss_step0",
                                            "warmup_s")}, flush=True)
            if row["status"] != "ok" and a.device == "cuda" and not cuda_context_ok():
                return context_lost(mode)
        if a.device == "cuda" and not a.no_gpu_busy:
            profile_modes(tr, snap, a, [r for r in timed if r.get("status") == "ok"], budget, lambda: write_csv(out, rows))
    except KeyboardInterrupt:
        print("interrupted by the time box; rows so far are in", out)
        return 124
    ok = {r["mode"]: r for r in rows if r.get("status") == "ok"}
    if "naive" in ok:
        nv = float(ok["naive"]["tokens_per_s"])
        for m, r in ok.items():
            if m != "naive":
                print(f"{m}: {float(r['tokens_per_s']) / nv:.2f}x naive tokens/s, extra peak "
                      f"{r['extra_peak_mb']} MiB vs naive {ok['naive']['extra_peak_mb']} MiB")
    print(write_csv(out, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
