"""One supernet training step, end to end, per implementation (the real trainer):

  autodistil.distill.train.SupernetTrainer.train_step: a sandwich of 4 subnets (largest, smallest,
  2 random) of a paper subspace (base by default), each distilled from a frozen, randomly
  initialised BERT-base-shaped teacher (transformers BertModel from a BertConfig, no download,
  wrapped in autodistil.nn.TeacherNet) with the relation loss, bf16 autocast on CUDA, AdamW,
  gradient clipping; batch 32 x seq 128, the last 10% of sequence 0 padded.

Modes, all on the same parameters, optimizer state, batches and sandwiches:
  naive            plain PyTorch slicing in a plain model (common.PlainSlicing: F.linear(x, W[:o, :i],
                   b[:o]), F.embedding, F.layer_norm, SDPA on the SuperBert's own parameters, autograd
                   end to end, full-size slice gradients), eager
  torch, cuda, triton   the backends, gradients written into the grad slices, eager
  graphs_cuda, graphs_triton, graphs_torch   that backend with TrainConfig.cuda_graphs: the teacher's
                   and each member's forward+backward replayed from CUDA graphs (distill/graphs.py;
                   on the CPU the graph-ready path with eager stand-ins, a smoke test only)

Protocol. One first step (naive, another sandwich) creates gradients and optimizer state; that state
is the snapshot every pass starts from. Each mode is warmed up by two passes over the `--steps`
steps (compiles, autotuning; a graph mode runs each subnet eagerly the first time and captures it the
second, so its timed passes only replay); the warm-up's first losses are compared across modes.
Then `--repeats` rounds (>= 5 by default), each timing one pass of every mode in turn (the modes
alternate, so a slow phase of the machine hits all of them), every pass from the snapshot over the
same steps. Reported per mode: tokens/s of the median pass (sequences x seq x members / wall time,
synchronised) with the slowest and fastest; memory: `base_mb` (allocated after the first step:
model, gradients, optimizer state, teacher; the same for every mode), `own_mb` (what the mode keeps
besides: the student's bf16 weight shadows for the backends, plus the graphs' memory pool for a
graph mode), `extra_peak_mb` (the largest peak over a pass above what was allocated at its start)
and `peak_mb` = base + own + extra; for a graph mode the graphs held, the pool and what its last
pass replayed, captured and ran eagerly. On CUDA, once every mode is timed (a profiler session may
leave CUPTI attached and slow down what is timed after it), one more pass per mode runs under
torch.profiler for the GPU's busy time per step (union of kernel, memcpy and memset intervals,
`gpu_busy_ms_per_step`) and its share of the median step (`gpu_busy_share`); a pass that records no
device event is an error (`gpu_busy_error`).
Targets: every backend >= 1.2x naive tokens/s with lower extra peak memory (issues 12/13); a graph
mode >= 1.5x naive with no higher peak memory and a GPU-busy share >= 60 % (issue 28).

    python bench/bench_supernet_step.py [--out CSV] [--budget-s S]       # GPU
    python bench/bench_supernet_step.py --device cpu --space tiny --batch 2 --seq 16 --steps 1 \\
        --teacher-layers 2 --vocab 2000 --modes naive torch graphs_torch  # CPU smoke test

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
from common import (
    RESULTS,
    Budget,
    PeakCPUMemory,
    PlainSlicing,
    busy_us,
    context_lost,  # noqa: E402
    cuda_context_ok,
    device_info,
    device_intervals,
    profile_cuda,
    write_csv,
)

from autodistil import ops  # noqa: E402
from autodistil.data.text import TokenBlocks  # noqa: E402
from autodistil.distill.train import SupernetTrainer, TrainConfig  # noqa: E402
from autodistil.nn import TeacherNet  # noqa: E402
from autodistil.ops.shared import grad_mode_ctx, lowp_shadow_bytes  # noqa: E402
from autodistil.space import PAPER_SPACES, TeacherShape  # noqa: E402

# in order of priority under a time budget; Triton modes after the others: their first steps compile
MODES = ("naive", "graphs_cuda", "cuda", "triton", "graphs_triton", "torch", "graphs_torch")
CUDA_DEFAULT = ("naive", "graphs_cuda", "cuda", "triton", "graphs_triton", "torch")
CPU_DEFAULT = ("naive", "torch", "graphs_torch")
WARMUP_PASSES = 2  # a graph mode captures a subnet the second time it sees it


def backend_of(mode: str) -> str:
    return "torch" if mode == "naive" else mode.split("_", 1)[-1]


def build_trainer(a, device: str) -> SupernetTrainer:
    """The real trainer with a random BERT-base-shaped teacher and random token blocks."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tc = BertConfig(num_hidden_layers=a.teacher_layers, vocab_size=a.vocab)  # BERT-base: 768, 12 heads of 64
    hf = BertModel(tc)
    teacher = TeacherNet(
        hf, TeacherShape(tc.num_hidden_layers, tc.hidden_size, tc.num_attention_heads, tc.intermediate_size)
    )
    del hf
    n = 4 * a.batch
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(min(1000, tc.vocab_size // 2), tc.vocab_size, (n, a.seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, a.seq - max(1, a.seq // 10) :] = 0
    ids[0][mask[0] == 0] = tc.pad_token_id
    data = TokenBlocks(ids, mask)
    cfg = TrainConfig(
        spaces=(a.space,),
        paper_spaces=True,
        seq_len=a.seq,
        batch_size=a.batch,
        steps=1_000_000,
        warmup_steps=0,
        n_random=2,
        init="teacher",
        precision=a.precision,
        backend="torch",
        device=device,
        eval_every=10**9,
        ckpt_every=10**9,
    )
    out = Path(tempfile.mkdtemp(prefix="supernet_step_"))  # the trainer writes nothing here in train_step
    meta = {"name": "random-bert-base", "sha256": None}
    return SupernetTrainer(cfg, PAPER_SPACES[a.space], teacher, meta, data, data, out)


def _snapshot(tr):
    to_cpu = lambda sd: {
        k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v))
        for k, v in sd.items()
    }
    opt = tr.opt.state_dict()
    return {
        "model": to_cpu(tr.model.state_dict()),
        "opt": {
            "state": {k: to_cpu(s) for k, s in opt["state"].items()},
            "param_groups": copy.deepcopy(opt["param_groups"]),
        },
        "sched": copy.deepcopy(tr.sched.state_dict()),
    }


def _restore(tr, snap):
    """Parameters copied in place (the graphs hold their addresses), optimizer and scheduler state
    loaded, gradients zeroed in place."""
    tr.model.load_state_dict(snap["model"])
    tr.opt.load_state_dict(snap["opt"])
    tr.sched.load_state_dict(snap["sched"])
    tr.opt.zero_grad(set_to_none=False)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def plain_model(model):
    """The naive mode's model over `model`'s parameters (common.PlainSlicing)."""
    return PlainSlicing(model)


@contextlib.contextmanager
def _in_mode(tr, mode: str, snap, graphs=None):
    """The trainer set up for `mode` (the plain model for naive; else the backend with in-place
    gradients, and `graphs` for a graph mode), model and optimizer restored to the snapshot (when
    given), step 0; the SuperBert, backend torch and no graphs back on exit."""
    model = tr.model
    if snap is not None:
        _restore(tr, snap)
    tr.step = 0
    try:
        if mode == "naive":
            tr.model = plain_model(model)
        else:
            model.backend = backend_of(mode)
        tr.graphs = graphs
        with grad_mode_ctx("inplace"):
            yield
    finally:
        tr.model = model
        model.backend = "torch"
        tr.graphs = None


def gpu_busy(tr, mode: str, snap, a, graphs=None) -> dict:
    """The GPU's busy time per step in one profiled pass over the timed steps of `mode` (from the
    snapshot again, the same sandwiches: nothing new compiles or is captured). Run after every mode is
    timed: a profiler session can leave CUPTI attached and slow down what is timed after it. No device
    event recorded is an error, not an idle GPU."""
    with _in_mode(tr, mode, snap, graphs):
        iv = device_intervals(profile_cuda(tr.train_step, a.steps))
    if not iv:
        raise RuntimeError("the profiler recorded no device events")
    return {"gpu_busy_ms_per_step": round(busy_us(iv) / 1000.0 / a.steps, 3)}


class Mode:
    """One mode's state over the run: its graphs (graph modes), passes, memory, first losses."""

    def __init__(self, name: str, row: dict):
        self.name, self.row = name, row
        self.graphs = None
        self.passes: list = []
        self.extra = 0.0
        self.graph_counts: dict = {}

    def own_mb(self, tr, precision_lowp: bool) -> float:
        """Memory the mode keeps besides the common base: weight shadows (backends under autocast) and
        the graphs' pool."""
        b = lowp_shadow_bytes(tr.model.parameters()) if (self.name != "naive" and precision_lowp) else 0
        if self.graphs is not None:
            b += self.graphs.pool_bytes
        return b / 2**20


def warm_up(tr, m: Mode, snap, a, device: str) -> None:
    """WARMUP_PASSES passes over the steps from the snapshot: compiles, tunes, captures (graph modes)."""
    if m.name.startswith("graphs_"):
        m.graphs = tr.enable_graphs(capture=device == "cuda")
        tr.graphs = None
    t = time.perf_counter()
    first = None
    for _ in range(WARMUP_PASSES):
        with _in_mode(tr, m.name, snap, m.graphs):
            recs = [tr.train_step() for _ in range(a.steps)]
        first = first or recs[0]
        if not all(torch.isfinite(torch.tensor(r["loss"])).item() for r in recs):
            raise FloatingPointError(f"{m.name}: a non-finite loss in warm-up")
    _sync(device)
    m.row.update(
        warmup_s=round(time.perf_counter() - t, 2),
        loss_step0=round(first["loss"], 6),
        member_losses_step0=";".join(f"{k}={v:.6f}" for k, v in first["members"].items()),
        sandwich_step0=";".join(first["subnets"].values()),
        finite=True,
    )


def timed_pass(tr, m: Mode, snap, a, device: str) -> None:
    """One timed pass of the mode from the snapshot; its wall time, its memory peak above its start."""
    with _in_mode(tr, m.name, snap, m.graphs):
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        recs = [tr.train_step() for _ in range(a.steps)]
        _sync(device)
        m.passes.append(time.perf_counter() - t0)
        if device == "cuda":
            m.extra = max(m.extra, (torch.cuda.max_memory_allocated() - start) / 2**20)
    if m.graphs is not None:
        m.graph_counts = {k: sum(r["graphs"][k] for r in recs) for k in ("replayed", "captured", "eager")}


def time_rounds(modes: list, repeats: int, budget, run, failed):
    """`repeats` rounds, each running run(m) (one timed pass) for every mode in turn: the modes
    alternate, so a slow phase of the machine hits all of them. A mode whose pass raises leaves the
    list (failed(m, e) records it; True there means the CUDA context is lost: that mode is returned
    and nothing more runs). After the first round, no round starts that the budget cannot fit (its
    estimate: one median pass of every mode)."""
    for k in range(repeats):
        if k > 0 and not budget.allows(sum(statistics.median(m.passes) for m in modes) + 1.0):
            print(f"time budget: {k} of {repeats} rounds timed")
            break
        for m in list(modes):
            try:
                run(m)
            except Exception as e:  # noqa: BLE001  (recorded; the other modes go on)
                modes.remove(m)
                if failed(m, e):
                    return m
    return None


def cpu_extra_mb(tr, m: Mode, snap) -> float:
    """CPU: glibc heap peak of one more step above its start (a smoke-test figure)."""
    with _in_mode(tr, m.name, snap, m.graphs):
        with PeakCPUMemory() as pm:
            tr.train_step()
    return pm.peak_mb


def finish_row(tr, m: Mode, a, base_mb: float, device: str) -> dict:
    members = 2 + tr.cfg.n_random
    tokens = a.steps * members * a.batch * a.seq
    ps = sorted(m.passes)
    dt = statistics.median(ps)
    lowp = device == "cuda" and a.precision in ("auto", "bf16") or a.precision == "bf16"
    own = m.own_mb(tr, lowp)
    extra = m.extra
    r = m.row
    r.update(
        status="ok",
        tokens_per_s=round(tokens / dt, 1),
        passes=len(ps),
        tokens_per_s_slowest=round(tokens / ps[-1], 1),
        tokens_per_s_fastest=round(tokens / ps[0], 1),
        step_s=round(dt / a.steps, 4),
        base_mb=round(base_mb, 1),
        own_mb=round(own, 1),
        extra_peak_mb=round(extra, 1),
        peak_mb=round(base_mb + own + extra, 1),
    )
    if m.graphs is not None:
        st = m.graphs.stats()
        r.update(
            graph_pool_mb=st["pool_mb"], member_graphs=st["member_graphs"], random_graphs=st["random_graphs"]
        )
        r.update({f"last_pass_{k}": v for k, v in m.graph_counts.items()})
    return r


def profile_modes(tr, snap, a, rows, budget, save, graphs=None) -> None:
    """After all timing: each measured mode's profiled pass (gpu_busy) into its row, while the
    budget allows (a pass costs about one timed pass plus the profiler's post-processing)."""
    graphs = graphs or {}
    for r in rows:
        if not budget.allows(3 * float(r["step_s"]) * a.steps + 2.0):
            r["gpu_busy_error"] = "not profiled: time budget"
            save()
            continue
        try:
            r.update(gpu_busy(tr, r["mode"], snap, a, graphs.get(r["mode"])))
            r["gpu_busy_share"] = round(r["gpu_busy_ms_per_step"] / (1000.0 * float(r["step_s"])), 3)
        except Exception as e:  # noqa: BLE001  (no CUPTI, ...: the timings stand)
            traceback.print_exc()
            r["gpu_busy_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if not cuda_context_ok():
                print(f"the CUDA context was lost while profiling {r['mode']}: no further profiling")
                save()
                return
        save()
        print(
            f"{r['mode']}: GPU busy {r.get('gpu_busy_ms_per_step', '-')} ms per step of "
            f"{1000 * float(r['step_s']):.1f} ({r.get('gpu_busy_share', r.get('gpu_busy_error'))})",
            flush=True,
        )


def _error(e) -> str:
    return f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--space", default="base", choices=sorted(PAPER_SPACES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="steps per pass (warm-up passes and timed passes)")
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed rounds, each one pass of every mode (median)"
    )
    ap.add_argument("--teacher-layers", type=int, default=12)
    ap.add_argument(
        "--vocab", type=int, default=30522, help="vocabulary size (smaller only for a quick smoke test)"
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU (the trainer's rule)",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        default=None,
        choices=MODES,
        help=f"default: {' '.join(CUDA_DEFAULT)} on CUDA, {' '.join(CPU_DEFAULT)} on CPU",
    )
    ap.add_argument(
        "--no-gpu-busy",
        action="store_true",
        help="CUDA: skip the profiled pass that measures the GPU's busy time per step",
    )
    ap.add_argument("--out", default=None, help="CSV path (default bench/results/supernet_step_<device>.csv)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="warm up no new mode and start no new round after this many seconds",
    )
    ap.add_argument("--resume", action="store_true", help="keep the modes already measured in --out")
    ap.add_argument("--exclude", nargs="*", default=[], choices=MODES)
    a = ap.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.seq < 2 or a.repeats < 1:
        ap.error("--steps, --repeats and --batch must be >= 1 and --seq >= 2")
    if a.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_supernet_step: needs a CUDA GPU (results: not measured); --device cpu runs the smoke test"
        )
        return 2
    budget = Budget(a.budget_s)
    out = Path(a.out) if a.out else RESULTS / f"supernet_step_{a.device}.csv"
    names = a.modes or (CUDA_DEFAULT if a.device == "cuda" else CPU_DEFAULT)
    names = [m for m in names if m not in a.exclude]
    status = ops.backend_status()
    print("backends:", status, flush=True)
    rows, done = [], set()
    if a.resume and out.is_file():
        with open(out, newline="") as fh:
            rows = [
                r
                for r in csv.DictReader(fh)
                if r.get("status") == "ok" or r.get("status", "").startswith("error")
            ]
        done = {r["mode"] for r in rows}
    info = {
        **device_info(a.device),
        "space": a.space,
        "batch": a.batch,
        "seq": a.seq,
        "sandwich": 4,
        "steps_timed": a.steps,
        "teacher": f"random BERT-base shape, {a.teacher_layers} layers, vocab {a.vocab}",
    }
    for m in a.exclude:
        rows.append(
            {
                **info,
                "mode": m,
                "status": "excluded (--exclude; gpu_check.sh excludes what broke the CUDA context)",
            }
        )

    def save():
        write_csv(out, rows)

    t_build = time.perf_counter()
    tr = build_trainer(a, a.device)
    with _in_mode(tr, "naive", None):  # a first step (another sandwich): gradients and optimizer state
        tr.step = 10**6
        tr.train_step()
    _sync(a.device)
    base_mb = torch.cuda.memory_allocated() / 2**20 if a.device == "cuda" else 0.0
    snap = _snapshot(tr)
    print(f"trainer ready in {time.perf_counter() - t_build:.1f}s: supernet {tr.model.config}", flush=True)
    modes, finished = [], []

    def finish():
        """Rows of the modes with at least one timed pass (all of them, or those timed before a cut)."""
        for m in modes:
            if m.passes and m not in finished:
                if a.device == "cpu":
                    m.extra = cpu_extra_mb(tr, m, snap)
                finished.append(m)
                rows.append(finish_row(tr, m, a, base_mb, a.device))
                keys = (
                    "mode",
                    "status",
                    "tokens_per_s",
                    "passes",
                    "peak_mb",
                    "own_mb",
                    "extra_peak_mb",
                    "loss_step0",
                    "warmup_s",
                )
                print({k: m.row.get(k) for k in keys}, flush=True)
        save()

    try:
        est = 0.0
        for name in names:  # warm-up, mode by mode
            if name in done:
                continue
            row = {
                **info,
                "mode": name,
                "backend": backend_of(name),
                "cuda_graphs": name.startswith("graphs_"),
                "grad_delivery": "autograd (full-size slice grads)" if name == "naive" else "inplace",
            }
            if name != "naive" and status[backend_of(name)] != "ok":
                rows.append({**row, "status": f"unavailable: {status[backend_of(name)]}"})
                save()
                continue
            if not budget.allows(est):
                rows.append({**row, "status": "skipped: time budget"})
                save()
                continue
            m = Mode(name, row)
            t = time.perf_counter()
            try:
                warm_up(tr, m, snap, a, a.device)
                modes.append(m)
            except Exception as e:  # noqa: BLE001  (recorded; the other modes still run)
                traceback.print_exc()
                rows.append({**row, "status": _error(e)})
                save()
                if a.device == "cuda" and not cuda_context_ok():
                    return context_lost(name)
            est = time.perf_counter() - t  # the next mode's warm-up, guessed from the last one's
            print(f"{name}: warmed up in {time.perf_counter() - t:.1f}s", flush=True)

        def failed(m, e):
            traceback.print_exc()
            rows.append({**m.row, "status": _error(e)})
            save()
            return a.device == "cuda" and not cuda_context_ok()

        lost = time_rounds(modes, a.repeats, budget, lambda m: timed_pass(tr, m, snap, a, a.device), failed)
        if lost is not None:
            return context_lost(lost.name)
        finish()
        if a.device == "cuda" and not a.no_gpu_busy:
            profile_modes(
                tr, snap, a, [m.row for m in finished], budget, save, {m.name: m.graphs for m in finished}
            )
    except KeyboardInterrupt:
        print("interrupted by the time box; rows so far are in", out)
        with contextlib.suppress(BaseException):  # keep what was timed; a second interrupt just stops
            finish()
        return 124
    ok = {r["mode"]: r for r in rows if r.get("status") == "ok"}
    if "naive" in ok:
        nv = ok["naive"]
        for name, r in ok.items():
            if name != "naive":
                x = float(r["tokens_per_s"]) / float(nv["tokens_per_s"])
                print(
                    f"{name}: {x:.2f}x naive tokens/s, peak {r['peak_mb']} MiB vs naive {nv['peak_mb']} "
                    f"MiB (extra {r['extra_peak_mb']} vs {nv['extra_peak_mb']})"
                )
    print(write_csv(out, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
