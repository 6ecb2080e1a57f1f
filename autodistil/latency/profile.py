"""On-device latency profiling of the building blocks of exported students, made to fight noise.

A student of L layers runs as  intercept(h, a, f) + L * slope(h, a, f)  (h hidden, a heads, f FFN
width). For each point (h, a, f) of a coarse grid per subspace, students of several depths
(default 0, 2 and 4 layers) are timed and the least-squares line over depth gives the layer cost
(slope) and the rest (intercept: embeddings, mask preparation, pooler, call overhead). This
replaces the earlier (T(2 layers) - T(0 layers)) / 2, the difference of two short, noisy timings.
Latency is multilinear in (h, a, f) in the ideal cost model (GEMMs h*a*d, h*f, attention a*d*T^2),
so trilinear interpolation over a coarse (h, a, f) grid is exact for it; the grid captures the rest.

Timing protocol (the same for the table, validation, budget verification and the run report):
  - the thread count and CPU affinity are set and recorded (all cores by default; threads=1 pins
    one core), `gc` is off while timing;
  - every model is warmed (>= warmup_s) right before each of its rounds, then timed for at least
    round_s seconds (>= min_runs runs): time-based rounds, not a fixed count of runs;
  - rounds are interleaved (all models once per round, shuffled), and a fixed anchor model is timed
    at the start of every round and after every `anchor_every` models; each run is divided by the
    anchor's speed at that moment (interpolated in time) relative to the anchor's median, so a
    machine that slows down or speeds up during profiling hits every entry alike;
  - per model: the median and a low percentile of all normalised runs; the noise of that statistic
    is measured by splitting the rounds in two halves (odd / even) and comparing their statistics.
On CUDA each run is timed with CUDA events after a synchronisation; CUDA graphs are optional.
The device is a small object (clock, runner factory, one timed run), so tests can drive the same
code with a synthetic device on a virtual clock.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..machine import cpu_id, cpu_model, loadavg as _loadavg  # noqa: F401  (cpu_id, cpu_model re-exported)

RUNTIMES = ("torch", "torch-compile", "onnxruntime")
WEIGHTING = "runs"  # how a model's runs of all rounds make its statistic: every run alike ("runs") or every
# round alike ("rounds", see round_weighted_percentile)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STATS = ("median", "low", "pNN")  # pNN: any percentile 1-99 of per-call latency (p90, p95, p99: tail budgets)
VOCAB = 30522


@dataclass(frozen=True)
class ProfileSettings:
    """How latency is measured: where, with what, and the timing protocol."""

    device: str = "cpu"  # cpu | cuda[:N]
    runtime: str = "torch"  # torch | torch-compile | onnxruntime (CPU)
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (the students' weights and activations)
    batch: int = 1  # sequences per forward: the budget is the latency of one such call
    seq_len: int = 128  # tokens per sequence of the timed forward
    threads: int = 0  # 0: all cores of this process's affinity; 1: one pinned core
    rounds: int = 12  # interleaved rounds (>= 2 to measure the noise by split halves)
    round_s: float = 0.125  # timed seconds per model per round
    warmup_s: float = 0.03  # warm-up seconds per model before each of its rounds
    min_runs: int = 3  # timed runs per model per round at least
    max_runs: int = 100000  # timed runs per model per round at most
    anchor_every: int = 4  # models between two anchor measurements within a round
    low_pct: float = 10.0  # the low percentile reported beside the median
    stat: str = "median"  # the statistic of per-call latency the table predicts and every
    # measurement reports: median | low (the low_pct percentile) | pNN, a
    # percentile such as p90 (budgets on tail latency), taken over
    # anchor-normalised runs (each divided by the anchor's speed at its time)
    depths: tuple = (0, 2, 4)  # student depths of the per-layer regression
    cuda_graphs: bool = False  # CUDA: time each forward as a replayed CUDA graph (less launch overhead)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is not allowed: choose {list(RUNTIMES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not allowed: choose {list(DTYPES)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device {self.device!r} is not allowed: 'cpu' or 'cuda[:N]'")
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError("runtime 'onnxruntime' is profiled on the CPU execution provider only")
        object.__setattr__(self, "stat", check_stat(self.stat))  # p05 is p5
        for f in ("batch", "seq_len", "rounds", "min_runs", "anchor_every"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")
        if self.round_s < 0 or self.warmup_s < 0:
            raise ValueError(f"round_s={self.round_s} and warmup_s={self.warmup_s} must be >= 0")
        if self.threads < 0:
            raise ValueError(f"threads={self.threads} must be >= 0 (0: all cores)")
        if not 0 < self.low_pct < 50:
            raise ValueError(f"low_pct={self.low_pct} must be in (0, 50)")
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if len(set(self.depths)) < 2 or min(self.depths) < 0:
            raise ValueError(f"depths {self.depths} must hold at least two distinct depths >= 0")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError("cuda_graphs needs a CUDA device")

    @property
    def n_threads(self) -> int:
        return self.threads or len(_available_cpus())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileSettings":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"profile settings {unknown} are unknown to this autodistil (table from another "
                f"version?); known: {sorted(known)}"
            )
        return cls(**{k: (tuple(v) if k == "depths" else v) for k, v in d.items()})


_ORIGINAL_AFFINITY = None


def _available_cpus() -> list[int]:
    global _ORIGINAL_AFFINITY
    if _ORIGINAL_AFFINITY is None:
        try:
            _ORIGINAL_AFFINITY = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            _ORIGINAL_AFFINITY = list(range(os.cpu_count() or 1))
    return _ORIGINAL_AFFINITY


def set_threads(s: ProfileSettings) -> dict:
    """Set torch's thread count and this process's CPU affinity (all cores of the original
    affinity by default; the last `threads` cores otherwise) and return what is now in force."""
    cpus = _available_cpus()
    n = s.n_threads
    if n > len(cpus):
        raise ValueError(f"threads={n} but this process may run on {len(cpus)} cores ({cpus})")
    use = cpus if n == len(cpus) else cpus[-n:]
    try:
        os.sched_setaffinity(0, use)
    except (AttributeError, OSError):
        pass
    torch.set_num_threads(n)
    try:
        now = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        now = use
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "affinity": now,
        "cores_available": len(cpus),
        "loadavg": _loadavg(),
    }


def machine_key(s: ProfileSettings) -> dict:
    """Everything that changes latency: where and how a table was measured."""
    key = {
        "device_type": "cuda" if s.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "runtime": s.runtime,
        "dtype": s.dtype,
        "batch": s.batch,
        "seq_len": s.seq_len,
    }
    if key["device_type"] == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {s.device!r} requested but CUDA is not available here")
        idx = torch.device(s.device).index or 0
        key["device_name"] = torch.cuda.get_device_name(idx)
        key["driver"] = torch.version.cuda or "unknown"
        key["cuda_graphs"] = s.cuda_graphs
    else:
        key["device_name"] = cpu_model()
        cid = cpu_id()
        if cid:
            key["cpu_id"] = cid
        key["threads"] = s.n_threads
        key["cores"] = len(_available_cpus())
    if s.runtime == "onnxruntime":
        import onnxruntime

        key["onnxruntime"] = onnxruntime.__version__
    return key


# --- the timed models ------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class ModelSpec:
    """A randomly initialised student of the exact class export produces ('bert' when
    heads x head_dim == hidden) or forced to the AutoDistilBertModel class ('autodistil')."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    cls: str = "auto"  # auto | bert | autodistil

    def resolved(self, head_dim: int) -> "ModelSpec":
        if self.cls != "auto":
            return self
        return ModelSpec(
            self.layers,
            self.hidden,
            self.heads,
            self.ffn,
            "bert" if self.heads * head_dim == self.hidden else "autodistil",
        )


def student_config(
    layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    head_dim: int,
    vocab: int = VOCAB,
    max_position: int = 512,
    cls: str = "auto",
):
    from transformers import BertConfig
    from ..hf_student import AutoDistilBertConfig

    if cls == "bert" and heads * head_dim != hidden:
        raise ValueError(f"a BertModel needs heads x head_dim == hidden ({heads} x {head_dim} != {hidden})")
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=max_position,
    )
    if cls == "bert" or (cls == "auto" and heads * head_dim == hidden):
        return BertConfig(hidden_act="gelu", **common)
    return AutoDistilBertConfig(attention_head_size=head_dim, **common)


def make_student(layers, hidden, heads, ffn, head_dim, vocab=VOCAB, cls: str = "auto"):
    from transformers import AutoModel

    torch.manual_seed(0)
    return AutoModel.from_config(student_config(layers, hidden, heads, ffn, head_dim, vocab, cls=cls)).eval()


def make_runner(model, s: ProfileSettings, tmpdir: Optional[Path] = None) -> Callable[[], None]:
    """A zero-argument callable running one forward in the chosen runtime (inference mode; on
    CUDA optionally replayed from a CUDA graph, falling back to eager with a note if capture fails)."""
    dev = torch.device(s.device)
    g = torch.Generator().manual_seed(0)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 2000
    ids = torch.randint(
        min(1000, vocab // 2), min(2000, vocab), (s.batch, s.seq_len), generator=g
    )  # in its vocab
    mask = torch.ones_like(ids)
    if s.runtime == "onnxruntime":
        import onnxruntime as ort
        import tempfile
        from ..export import onnx_export_model

        d = Path(tmpdir or tempfile.mkdtemp())
        path = d / f"m{id(model)}.onnx"
        onnx_export_model(model, path, s.seq_len)
        so = ort.SessionOptions()
        so.intra_op_num_threads = s.n_threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": (0 * ids).numpy()}
        feed = {i.name: feed[i.name] for i in sess.get_inputs()}  # no token types in some families
        return lambda: sess.run(None, feed)
    model = model.to(dev, DTYPES[s.dtype]).eval()
    ids, mask = ids.to(dev), mask.to(dev)
    fwd = torch.compile(model) if s.runtime == "torch-compile" else model

    def eager():
        with torch.inference_mode():
            fwd(input_ids=ids, attention_mask=mask)

    if dev.type == "cuda" and s.cuda_graphs:
        graph_run = _cuda_graph_runner(fwd, ids, mask)
        if graph_run is not None:
            return graph_run
    return eager


CUDA_GRAPH_FAILURES: list = []  # one message per model whose capture failed (timed eager instead)


def _cuda_graph_runner(fwd, ids, mask):
    """Capture one forward in a CUDA graph (static inputs); None (eager) if capture fails."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.inference_mode():
            for _ in range(3):
                fwd(input_ids=ids, attention_mask=mask)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            fwd(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        keep = (graph, fwd, ids, mask)  # the graph reads these addresses: keep them alive with the runner
        return lambda: keep[0].replay()
    except Exception as e:  # noqa: BLE001 - any capture failure: eager instead, said and counted
        import warnings

        msg = f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:200]}); timing eager instead"
        CUDA_GRAPH_FAILURES.append(msg)
        warnings.warn(msg)
        torch.cuda.synchronize()
        return None


class TorchDevice:
    """The real device: builds randomly initialised students and times one run each call
    (CPU: perf_counter; CUDA: events around the run after a synchronisation)."""

    def __init__(self, s: ProfileSettings, head_dim: int, vocab: int = VOCAB):
        self.s, self.head_dim, self.vocab = s, head_dim, vocab
        self.cuda = s.device.startswith("cuda")
        self.clock = time.perf_counter
        self._tmp = None

    def key(self) -> dict:
        return machine_key(self.s)

    def prepare(self) -> dict:
        try:
            self._saved = (torch.get_num_threads(), os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._saved = (torch.get_num_threads(), None)
        rec = (
            set_threads(self.s)
            if not self.cuda
            else {"threads": torch.get_num_threads(), "loadavg": _loadavg()}
        )
        if self.cuda:
            torch.cuda.synchronize()
        return rec

    def runner(self, spec) -> Callable[[], None]:
        if callable(spec):  # a ready model (e.g. an exported folder loaded with AutoModel)
            return make_runner(spec, self.s, self._tmpdir())
        sp = spec.resolved(self.head_dim)
        if self.cuda:  # initialise on the GPU: much faster than on the host for BERT-size models
            with torch.device(self.s.device):
                model = make_student(
                    sp.layers, sp.hidden, sp.heads, sp.ffn, self.head_dim, self.vocab, sp.cls
                )
        else:
            model = make_student(sp.layers, sp.hidden, sp.heads, sp.ffn, self.head_dim, self.vocab, sp.cls)
        return make_runner(model, self.s, self._tmpdir())

    def _tmpdir(self):
        if self.s.runtime == "onnxruntime" and self._tmp is None:
            import tempfile

            self._tmp = Path(tempfile.mkdtemp(prefix="autodistil-prof-"))
        return self._tmp

    def restore(self):
        """Give back the thread count and affinity in force before prepare()."""
        saved = getattr(self, "_saved", None)
        if saved:
            torch.set_num_threads(saved[0])
            if saved[1] is not None:
                try:
                    os.sched_setaffinity(0, saved[1])
                except OSError:
                    pass

    def time_one(self, run) -> float:
        """One run in ms."""
        if self.cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            run()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1e3

    def close(self):
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)


# --- statistics ------------------------------------------------------------------------------
def percentile(xs: list, p: float) -> float:
    """Linear-interpolated percentile (p in [0, 100]) of a non-empty list."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100.0
    lo = int(math.floor(k))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


STATS_ALLOWED = "median, low (the low_pct percentile, 10 by default) or a percentile p1-p99 such as p90"


def check_stat(stat: str, what: str = "stat") -> str:
    """The canonical name of a statistic of per-call latency: median, low, or pNN written without leading
    zeros (p05 -> p5); ValueError naming `what` (the flag or field that gave it) and what is allowed
    otherwise. Two names of one statistic (p5 and p05, low at low_pct 10 and p10, p50 and median) are
    compared with `same_stat`."""
    if stat in ("median", "low"):
        return stat
    if isinstance(stat, str) and stat[:1] == "p" and stat[1:].isdigit() and 1 <= int(stat[1:]) <= 99:
        return f"p{int(stat[1:])}"
    raise ValueError(f"{what} {stat!r} is not allowed: choose {STATS_ALLOWED}")


canonical_stat = check_stat


def same_stat(a: str, b: str, low_pct_a: float = 10.0, low_pct_b: float = 10.0) -> bool:
    """Whether statistics `a` (low meaning its low_pct_a percentile) and `b` (low: low_pct_b) are one:
    the same percentile of per-call latency."""
    return stat_pct(check_stat(a), low_pct_a) == stat_pct(check_stat(b), low_pct_b)


def stat_label(stat: str, low_pct: float = 10.0) -> str:
    """'the median', 'the 90th percentile', ... of per-call latency, as reports and help texts say it
    (low: its low_pct percentile, so pass the table's low_pct where it is known)."""
    stat = check_stat(stat)
    if stat == "median":
        return "the median"
    q = low_pct if stat == "low" else int(stat[1:])
    q = int(q) if float(q).is_integer() else q
    teen = not isinstance(q, int) or 10 <= q % 100 <= 20 or q % 10 > 3
    suffix = "th" if teen else ("th", "st", "nd", "rd")[q % 10]
    return f"the {q}{suffix} percentile"


def stat_tag(stat: str, low_pct: float = 10.0) -> str:
    """The short name printed beside a figure: median, p90, ...; low as the percentile it stands for."""
    stat = check_stat(stat)
    return f"p{low_pct:g}" if stat == "low" else stat


def statistic(xs: list, stat: str, low_pct: float) -> float:
    if stat == "median":
        return statistics.median(xs)
    return percentile(xs, low_pct if stat == "low" else int(stat[1:]))


def stat_pct(stat: str, low_pct: float) -> float:
    """The percentile a statistic stands for (median: 50)."""
    return 50.0 if stat == "median" else float(low_pct if stat == "low" else int(stat[1:]))


def round_weighted_percentile(rounds: list, p: float) -> float:
    """The p-th percentile of the runs of all rounds, each round weighing alike (a run weighs 1 / the runs of
    its round): a round timed while the machine ran fast holds more runs of a short model than a slow
    round, and would otherwise count for more. Linear between the midpoints of the runs' weights; with
    one round, or rounds of equal length, the plain percentile of the pooled runs at p = 50."""
    pts = sorted((x, 1.0 / len(r)) for r in rounds if r for x in r)
    if not pts:
        raise ValueError("no runs to take a percentile of")
    target = p / 100.0 * sum(w for _, w in pts)
    acc, prev = 0.0, None
    for x, w in pts:
        mid = acc + w / 2
        if mid >= target:
            if prev is None:
                return x
            return prev[0] + (x - prev[0]) * (target - prev[1]) / (mid - prev[1]) if mid > prev[1] else x
        prev = (x, mid)
        acc += w
    return pts[-1][0]


@dataclass
class Timing:
    """One model's timings: normalised runs per round (ms at the session's median anchor speed). Its
    statistics weigh every run alike (`weighting` "runs") or every round alike ("rounds")."""

    rounds: list  # [[ms, ...], ...] normalised
    raw_rounds: list  # [[ms, ...], ...] as measured
    stat: str
    low_pct: float
    weighting: str = "runs"

    def _pool(self, idx=None, raw=False):
        rs = self.raw_rounds if raw else self.rounds
        return [x for i, r in enumerate(rs) if idx is None or i in idx for x in r]

    def _stat(self, stat: str, idx=None, raw=False) -> float:
        if self.weighting == "rounds":
            rs = self.raw_rounds if raw else self.rounds
            return round_weighted_percentile(
                [r for i, r in enumerate(rs) if idx is None or i in idx], stat_pct(stat, self.low_pct)
            )
        return statistic(self._pool(idx, raw), stat, self.low_pct)

    @property
    def ms(self) -> float:
        """The statistic the table uses (normalised)."""
        return self._stat(self.stat)

    @property
    def median(self) -> float:
        return self._stat("median")

    @property
    def low(self) -> float:
        return self._stat("low")

    @property
    def raw_median(self) -> float:
        return self._stat("median", raw=True)

    def halves(self, stat: Optional[str] = None) -> Optional[tuple]:
        """The statistic on the even and on the odd rounds (None with fewer than 2 rounds)."""
        if len(self.rounds) < 2:
            return None
        st = stat or self.stat
        return (
            self._stat(st, set(range(0, len(self.rounds), 2))),
            self._stat(st, set(range(1, len(self.rounds), 2))),
        )

    @property
    def noise_sd(self) -> float:
        """sd of the full-data statistic, from the split halves: var(a - b) = 4 var(full)."""
        h = self.halves()
        return abs(h[0] - h[1]) / 2 if h else float("nan")

    def summary(self) -> dict:
        h = self.halves()
        return {
            "ms": self.ms,
            "median_ms": self.median,
            "low_ms": self.low,
            "raw_median_ms": self.raw_median,
            "noise_sd_ms": self.noise_sd,
            "halves_ms": list(h) if h else None,
            "round_medians_ms": [statistics.median(r) for r in self.rounds],
            "runs": sum(len(r) for r in self.rounds),
        }


def split_half_noise(timings: dict, stat: Optional[str] = None) -> dict:
    """Noise of the statistic, measured: per model, |half A - half B| / mean of the halves, where
    the halves are the even and the odd rounds. `sd_pct` is the implied sd of one full estimate
    (RMS of (A - B) / (2 m)); `halves_mape_pct` is the mean relative gap between the halves."""
    rel = []
    for t in timings.values():
        h = t.halves(stat)
        if h and (h[0] + h[1]) > 0:
            rel.append((h[0] - h[1]) / ((h[0] + h[1]) / 2))
    if not rel:
        return {
            "n": 0,
            "sd_pct": float("nan"),
            "halves_mape_pct": float("nan"),
            "halves_p90_pct": float("nan"),
        }
    return {
        "n": len(rel),
        "sd_pct": 100 * math.sqrt(sum(x * x for x in rel) / len(rel)) / 2,
        "halves_mape_pct": 100 * sum(abs(x) for x in rel) / len(rel),
        "halves_p90_pct": 100 * percentile([abs(x) for x in rel], 90),
    }


# --- the measurement protocol ------------------------------------------------------------------
def _timed_window(dev, run, seconds: float, min_runs: int, max_runs: int) -> list[float]:
    out = []
    start = dev.clock()
    while len(out) < max_runs and (len(out) < min_runs or dev.clock() - start < seconds):
        out.append(dev.time_one(run))
    return out


def _warm(dev, run, seconds: float):
    start = dev.clock()
    run()
    while dev.clock() - start < seconds:
        run()


@dataclass
class Session:
    timings: dict  # {name: Timing}
    anchor: dict  # {"ms": median anchor ms (raw), "series": [(t, ms)], "spread_pct"}
    threads: dict
    seconds: float
    stopped_early: bool = False
    raw: dict = field(default_factory=dict)  # {name: [[ms, ...] per round]} as measured
    stamps: dict = field(default_factory=dict)  # {name: [the middle of each round's window, dev.clock()]}
    series: list = field(default_factory=list)  # [(dev.clock(), anchor ms)] of every anchor point

    def noise(self, stat: Optional[str] = None) -> dict:
        return split_half_noise(self.timings, stat)

    def renormalised(self, stat: str, low_pct: float, weighting: str) -> "Session":
        """The same runs with another statistic or weighting (timings recomputed from the raw runs)."""
        return dataclasses.replace(
            self, timings=normalise(self.raw, self.stamps, self.series, stat, low_pct, weighting)
        )


def normalise(raw: dict, stamps: dict, series: list, stat: str, low_pct: float, weighting: str) -> dict:
    """{name: Timing}: every run divided by the anchor's speed at its time (interpolated between anchor
    points) relative to the anchor's median over the session."""
    a_med = statistics.median(m for _, m in series)
    return {
        k: Timing(
            [[x * a_med / _interp(series, t) for x in xs] for xs, t in zip(raw[k], stamps[k])],
            raw[k],
            stat,
            low_pct,
            weighting,
        )
        for k in raw
    }


def measure(
    runners: dict,
    s: ProfileSettings,
    dev,
    anchor_runner,
    seed: int = 0,
    deadline: Optional[float] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Session:
    """Time every runner with the protocol above. `anchor_runner` is timed at the start of each
    round and after every `anchor_every` models. `deadline` (dev.clock() value) stops after the
    current round (at least one round always completes; a second is needed for the noise)."""
    t_start = dev.clock()
    threads = dev.prepare()
    names = list(runners)
    rng = random.Random(seed)
    raw = {k: [] for k in names}
    stamps = {k: [] for k in names}
    series = []
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    stopped = False
    try:

        def anchor_point():
            _warm(dev, anchor_runner, s.warmup_s)
            t0 = dev.clock()
            xs = _timed_window(dev, anchor_runner, max(s.round_s / 2, 0.0), s.min_runs, s.max_runs)
            series.append(((t0 + dev.clock()) / 2, statistics.median(xs)))

        for rnd in range(s.rounds):
            if deadline is not None and rnd >= 1 and dev.clock() > deadline:
                stopped = True
                break
            order = names[:]
            rng.shuffle(order)
            anchor_point()
            for i, k in enumerate(order):
                run = runners[k]
                _warm(dev, run, s.warmup_s)
                t0 = dev.clock()
                xs = _timed_window(dev, run, s.round_s, s.min_runs, s.max_runs)
                raw[k].append(xs)
                stamps[k].append((t0 + dev.clock()) / 2)
                if (i + 1) % s.anchor_every == 0 and i + 1 < len(order):
                    anchor_point()
            anchor_point()
            if progress:
                progress(f"round {rnd + 1}/{s.rounds} done")
    finally:
        if was_enabled:
            gc.enable()
        if hasattr(dev, "restore"):
            dev.restore()
    a_med = statistics.median(m for _, m in series)
    timings = normalise(raw, stamps, series, s.stat, s.low_pct, WEIGHTING)
    a_vals = [m for _, m in series]
    anchor = {
        "ms": a_med,
        "series": [[round(t - t_start, 3), m] for t, m in series],
        "spread_pct": 100 * (max(a_vals) - min(a_vals)) / a_med,
    }
    return Session(timings, anchor, threads, dev.clock() - t_start, stopped, raw, stamps, series)


def _interp(series: list, t: float) -> float:
    """The anchor's ms at time t (linear between measurements, held at the ends)."""
    if t <= series[0][0]:
        return series[0][1]
    for (t0, m0), (t1, m1) in zip(series, series[1:]):
        if t <= t1:
            return m0 + (m1 - m0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return series[-1][1]


def rounds_for(seconds: float, round_s: float, at_least: int = 2) -> int:
    """Rounds of `round_s` giving about `seconds` of timing per model (at least 2: the split-half
    noise needs two halves)."""
    if round_s <= 0:
        return at_least
    return max(at_least, math.ceil(seconds / round_s - 1e-9))


# --- the grid --------------------------------------------------------------------------------
def _pick(values: list, n: int) -> list:
    """n values spread evenly over a sorted list, ends kept (all of them when n >= len)."""
    values = sorted(values)
    if n >= len(values):
        return values
    if n == 1:
        return [values[len(values) // 2]]
    idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return [values[i] for i in idx]


# Grid points per subspace (hidden, heads, FFN width) when none is asked for. On CUDA every heads
# value of the paper spaces (4): on the H200 latency is not linear in heads (2026-11-26/27 runs:
# students with 9 heads, interpolated between the grid's 7 and 10, ran 8-14 % slower than
# predicted in both runs, while students on grid points averaged about 0 % signed error).
DEFAULT_GRID = {"cpu": (3, 2, 2), "cuda": (3, 4, 2)}


def default_grid(device: str) -> tuple:
    """The grid `build_table` profiles when none is given, for a device string ('cpu', 'cuda:1')."""
    return DEFAULT_GRID["cuda" if device.startswith("cuda") else "cpu"]


def space_grid(space, grid: tuple = (3, 2, 2)) -> dict:
    """A rectangular (hidden, heads, FFN width) grid covering the space: `grid` points per
    dimension (hidden and heads among the space's values, FFN widths evenly over its range)."""
    nh, na, nf = grid
    if min(grid) < 1:
        raise ValueError(f"grid {grid} must have at least one point per dimension")
    hs = _pick([int(h) for h in space.hidden.values], nh)
    as_ = _pick([int(a) for a in space.heads.values], na)
    fvals = sorted({int(round(r * h)) for h in space.hidden.values for r in space.ffn_ratio.values})
    flo, fhi = fvals[0], fvals[-1]
    if nf == 1 or flo == fhi:
        fs = [fvals[len(fvals) // 2]] if nf == 1 else [flo]
    else:
        fs = sorted({int(round(flo + i * (fhi - flo) / (nf - 1))) for i in range(nf)})
    return {"space": space.name, "hidden": hs, "heads": as_, "ffn": fs}


def bert_pairs(space) -> list[tuple]:
    """(hidden, heads) of the space whose students export as BertModel (heads x head_dim == hidden)."""
    return sorted(
        {
            (int(h), int(a))
            for h in space.hidden.values
            for a in space.heads.values
            if int(a) * space.head_dim == int(h)
        }
    )


def anchor_spec(spaces) -> ModelSpec:
    """A fixed mid-size 2-layer student of the middle space."""
    s = spaces[len(spaces) // 2]
    h = s.hidden.values[len(s.hidden.values) // 2]
    a = s.heads.values[len(s.heads.values) // 2]
    r = s.ffn_ratio.values[len(s.ffn_ratio.values) // 2]
    return ModelSpec(2, int(h), int(a), int(round(r * h)), "autodistil")


def ols(xs: list, ys: list) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    vx = sum((x - mx) ** 2 for x in xs)
    if vx == 0:
        raise ValueError("least squares over depth needs at least two distinct depths")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / vx
    return slope, my - slope * mx


TEACHER_RUN = "teacher:end-to-end"  # the teacher's runner name inside a profile session


def build_table(
    spaces,
    settings: ProfileSettings,
    vocab: int = VOCAB,
    grid: Optional[tuple] = None,
    seed: int = 0,
    calibrate: int = 12,
    max_bert_pairs: int = 8,
    device=None,
    budget_s: Optional[float] = None,
    progress: Optional[Callable[[str], None]] = None,
    teacher=None,
    replay: Optional[Session] = None,
):
    """Profile the grid of every space (depth regression per grid point), the BertModel-shaped
    (hidden, heads) pairs, and `calibrate` random full students measured end to end in the same
    session (block sums validated against them; a linear correction kept only if leave-one-out
    error improves). `device`: a TorchDevice by default (tests pass a synthetic one).
    `budget_s`: stop after the round in progress once this many seconds have passed.
    `grid`: points per subspace in (hidden, heads, FFN width); None: ``default_grid(settings.device)``.
    `teacher`: (name, ready model) timed end to end in the same session: ``meta["teacher"]`` holds its
    latency, what budgets given as fractions of the teacher are fractions of.
    `replay`: the Session an earlier call with the same arguments measured (``meta["session"]`` is not
    kept; experiments capture it): the table is fitted from its runs and nothing is timed."""
    from .predict import LatencyTable

    grid = tuple(grid) if grid is not None else default_grid(settings.device)
    head_dims = {s.head_dim for s in spaces}
    if len(head_dims) != 1:
        raise ValueError(f"spaces disagree on head dim {sorted(head_dims)}: profile them separately")
    d = head_dims.pop()
    dev = device or TorchDevice(settings, d, vocab)
    t0 = dev.clock()
    grids = [space_grid(s, grid) for s in spaces]
    depths = sorted(settings.depths)
    specs = {}

    def add(spec: ModelSpec) -> str:
        name = f"L{spec.layers}-H{spec.hidden}-A{spec.heads}-F{spec.ffn}-{spec.cls}"
        specs[name] = spec
        return name

    cells = []  # (kind, space, h, a, f, cls) -> names per depth
    for g in grids:
        for h in g["hidden"]:
            for a in g["heads"]:
                for f in g["ffn"]:
                    cells.append(("grid", g["space"], h, a, f, "autodistil"))
    pairs = sorted({p for s in spaces for p in bert_pairs(s)})
    if len(pairs) > max_bert_pairs:
        pairs = _pick(pairs, max_bert_pairs)
    for h, a in pairs:
        sp = next(s for s in spaces if (h, a) in bert_pairs(s))
        fv = sorted({int(round(r * h)) for r in sp.ffn_ratio.values})
        for f in sorted({fv[0], fv[-1]}):
            cells.append(("bert", sp.name, h, a, f, "bert"))
    cell_names = []
    for kind, sname, h, a, f, cls in cells:
        # depth 0 does not depend on heads / FFN: one base model per (hidden, class)
        cell_names.append(
            [
                add(
                    ModelSpec(0, h, a if cls == "bert" else 1, h, cls)
                    if L == 0
                    else ModelSpec(L, h, a, f, cls)
                )
                for L in depths
            ]
        )
    calib = []
    if calibrate:
        rng = random.Random(seed + 99991)  # distinct from validation's students
        seen = set()
        while len(calib) < calibrate and len(seen) < sum(len(s) for s in spaces):
            sp = spaces[len(calib) % len(spaces)]
            c = sp.sample(rng)
            if (sp.name, c) in seen:
                continue
            seen.add((sp.name, c))
            calib.append((sp.name, c))
    calib_names = [add(ModelSpec(c.layers, c.hidden, c.heads, c.ffn, "auto").resolved(d)) for _, c in calib]
    anchor = anchor_spec(spaces)
    if replay is not None:
        missing = sorted(set(specs) - set(replay.timings))
        if missing:
            raise ValueError(
                f"replayed session lacks {len(missing)} of the table's models, e.g. {missing[:3]}"
            )
        sess = replay
    else:
        if progress:
            progress(f"building {len(specs)} models")
        runners = {k: dev.runner(v) for k, v in specs.items()}
        if teacher is not None:
            runners[TEACHER_RUN] = dev.runner(teacher[1])
        deadline = None if budget_s is None else t0 + budget_s
        sess = measure(runners, settings, dev, dev.runner(anchor), seed, deadline, progress)
    res = {k: t for k, t in sess.timings.items()}
    t_timing = res.pop(TEACHER_RUN, None)
    halves = {k: t.halves() for k, t in res.items()}
    rows = []
    for (kind, sname, h, a, f, cls), names in zip(cells, cell_names):
        ys = [res[n].ms for n in names]
        slope, icpt = ols(depths, ys)
        lows = [res[n].low for n in names]
        lslope, licpt = ols(depths, lows)
        hv = [halves[n] for n in names]
        if all(hv):
            sa, ia = ols(depths, [x[0] for x in hv])
            sb, ib = ols(depths, [x[1] for x in hv])
            ssd, isd = abs(sa - sb) / 2, abs(ia - ib) / 2
        else:
            ssd = isd = float("nan")
        rows.append(
            {
                "kind": kind,
                "space": sname,
                "hidden": h,
                "heads": a,
                "ffn": f,
                "cls": cls,
                "slope_ms": slope,
                "intercept_ms": icpt,
                "slope_sd_ms": ssd,
                "intercept_sd_ms": isd,
                "low_slope_ms": lslope,
                "low_intercept_ms": licpt,
                "depths": depths,
                "depth_ms": ys,
            }
        )
    models = {k: {"spec": asdict(specs[k]), **res[k].summary()} for k in specs}
    noise = sess.noise()
    table = LatencyTable(
        key=dev.key(),
        settings=settings.to_dict(),
        head_dim=d,
        vocab=vocab,
        spaces=[s.to_dict() for s in spaces],
        grids=grids,
        rows=rows,
        meta={
            "grid_points": list(grid),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "threads": sess.threads,
            "noise": noise,
            "stopped_early": sess.stopped_early,
            "rounds_done": min(len(t.rounds) for t in res.values()),
            "anchor": {"spec": asdict(anchor), **sess.anchor},
            "models": models,
        },
    )
    if t_timing is not None and teacher is not None:
        sm = t_timing.summary()
        table.meta["teacher"] = {
            "name": teacher[0],
            "ms": sm["ms"],
            "noise_sd_ms": sm["noise_sd_ms"],
            "low_ms": sm["low_ms"],
        }
    if calib:
        meas = [res[n].ms for n in calib_names]
        cfgs = [c for _, c in calib]
        table.meta["calibration"] = {
            "students": [{"space": sn, **c.as_dict()} for sn, c in calib],
            "measured_ms": meas,
            **table.fit_correction(cfgs, meas),
        }
    table.meta["profile_seconds"] = round(dev.clock() - t0, 1)
    if hasattr(dev, "close"):
        dev.close()
    return table
