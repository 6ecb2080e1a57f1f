"""On-device latency profiling of the building blocks of exported students.

A student of L layers runs as  base(h) + L * layer(h, a, f), where
  base(h)       = T(0-layer student): embeddings, mask preparation, pooler, call overhead
                  (kept as its own entry: predictors that drop it mispredict small students);
  layer(h,a,f)  = (T(2-layer student) - T(0-layer student)) / 2.
Both are timed on the exact model class that export produces (BertModel when
heads x head_dim == hidden, AutoDistilBertModel otherwise) in the chosen runtime.
Measurements are interleaved (round-robin over all models, several rounds) and each entry
is the median over rounds of trimmed medians, with its spread kept as uncertainty.
"""
from __future__ import annotations

import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

RUNTIMES = ("torch", "torch-compile", "onnxruntime")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VOCAB = 30522


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


@dataclass(frozen=True)
class ProfileSettings:
    device: str = "cpu"
    runtime: str = "torch"
    dtype: str = "fp32"
    batch: int = 1
    seq_len: int = 128
    threads: int = 0                  # 0: all cores
    rounds: int = 5
    runs: int = 10                    # timed runs per model per round
    warmup: int = 2
    trim: float = 0.2                 # fraction trimmed from each end

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r} is not allowed: choose {list(RUNTIMES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not allowed: choose {list(DTYPES)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device {self.device!r} is not allowed: 'cpu' or 'cuda[:N]'")
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError("runtime 'onnxruntime' is profiled on the CPU execution provider only")
        for f in ("batch", "seq_len", "rounds", "runs"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")

    @property
    def n_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def machine_key(s: ProfileSettings) -> dict:
    """Everything that changes latency: where and how a table was measured."""
    key = {"device_type": "cuda" if s.device.startswith("cuda") else "cpu", "torch": torch.__version__,
           "runtime": s.runtime, "dtype": s.dtype, "batch": s.batch, "seq_len": s.seq_len}
    if key["device_type"] == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {s.device!r} requested but CUDA is not available here")
        idx = torch.device(s.device).index or 0
        key["device_name"] = torch.cuda.get_device_name(idx)
        key["driver"] = torch.version.cuda or "unknown"
    else:
        key["device_name"] = cpu_model()
        key["threads"] = s.n_threads
        key["cores"] = os.cpu_count()
    if s.runtime == "onnxruntime":
        import onnxruntime
        key["onnxruntime"] = onnxruntime.__version__
    return key


# --- building the timed models ---------------------------------------------------------------
def student_config(layers: int, hidden: int, heads: int, ffn: int, head_dim: int, vocab: int = VOCAB,
                   max_position: int = 512):
    from transformers import BertConfig
    from ..nn.hf import AutoDistilBertConfig
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=ffn, max_position_embeddings=max_position)
    if heads * head_dim == hidden:
        return BertConfig(hidden_act="gelu", **common)
    return AutoDistilBertConfig(attention_head_size=head_dim, **common)


def make_student(layers, hidden, heads, ffn, head_dim, vocab=VOCAB):
    from transformers import AutoModel
    torch.manual_seed(0)
    return AutoModel.from_config(student_config(layers, hidden, heads, ffn, head_dim, vocab)).eval()


def make_runner(model, s: ProfileSettings, tmpdir: Optional[Path] = None) -> Callable[[], None]:
    """A zero-argument callable running one forward in the chosen runtime (synchronised)."""
    dev = torch.device(s.device)
    ids = torch.randint(1000, 2000, (s.batch, s.seq_len))
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
        return lambda: sess.run(None, feed)
    model = model.to(dev, DTYPES[s.dtype])
    ids, mask = ids.to(dev), mask.to(dev)
    fwd = model
    if s.runtime == "torch-compile":
        fwd = torch.compile(model)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run():
        with torch.inference_mode():
            fwd(input_ids=ids, attention_mask=mask)
        sync()
    return run


def _time_once(run, s: ProfileSettings) -> list[float]:
    """s.runs timings in ms (CUDA: events after synchronisation)."""
    out = []
    if s.device.startswith("cuda"):
        for _ in range(s.runs):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            run()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b))
        return out
    for _ in range(s.runs):
        t = time.perf_counter_ns()
        run()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def trimmed_median(xs: list[float], trim: float) -> float:
    xs = sorted(xs)
    k = int(len(xs) * trim)
    core = xs[k:len(xs) - k] or xs
    return statistics.median(core)


def measure_interleaved(runners: dict, s: ProfileSettings, seed: int = 0, desc: str = "profiling") -> dict:
    """{name: (estimate_ms, spread_ms, per_round_ms)}: round-robin over all runners, shuffled per
    round, so slow drifts of a shared machine hit every entry alike."""
    torch.set_num_threads(s.n_threads)
    rng = random.Random(seed)
    per_round = {k: [] for k in runners}
    names = list(runners)
    with tqdm(total=s.rounds * len(names), desc=desc, leave=False) as bar:
        for _ in range(s.rounds):
            rng.shuffle(names)
            for k in names:
                run = runners[k]
                for _ in range(s.warmup):
                    run()
                per_round[k].append(trimmed_median(_time_once(run, s), s.trim))
                bar.update(1)
    out = {}
    for k, v in per_round.items():
        med = statistics.median(v)
        spread = (statistics.quantiles(v, n=4)[2] - statistics.quantiles(v, n=4)[0]) / 2 if len(v) >= 2 else 0.0
        out[k] = (med, spread, v)
    return out


def layer_combos(space, max_combos: Optional[int] = None) -> tuple[list, bool]:
    """(hidden, heads, ratio) combos to measure; a coarser grid (ends kept) when too many."""
    hs, as_, rs = list(space.hidden.values), list(space.heads.values), list(space.ffn_ratio.values)
    coarse = False
    while max_combos and len(hs) * len(as_) * len(rs) > max_combos:
        longest = max((hs, as_, rs), key=len)
        if len(longest) <= 2:
            break
        thinned = longest[::2] if longest[-1] == longest[::2][-1] else longest[::2] + [longest[-1]]
        longest[:] = thinned
        coarse = True
    return [(h, a, r) for h in hs for a in as_ for r in rs], coarse


def anchor_config(spaces) -> tuple:
    """A fixed mid-size 2-layer student (layers, hidden, heads, ffn), re-measured whenever the
    table is used for validation: the ratio of its latencies tells how far the machine's speed
    drifted between the two sessions (shared machines drift by tens of percent)."""
    s = spaces[len(spaces) // 2]
    h = s.hidden.values[len(s.hidden.values) // 2]
    a = s.heads.values[len(s.heads.values) // 2]
    r = s.ffn_ratio.values[len(s.ffn_ratio.values) // 2]
    return (2, int(h), int(a), int(round(r * h)))


def build_table(spaces, settings: ProfileSettings, vocab: int = VOCAB, max_combos: Optional[int] = None,
                seed: int = 0, calibrate: int = 12):
    """Profile every (hidden, heads, ratio) layer of the spaces and a base block per hidden; then,
    with `calibrate` > 0, fit a linear correction on that many random full students measured in
    the same interleaved session (kept only when leave-one-out error improves)."""
    from .predict import LatencyTable
    t0 = time.time()
    head_dims = {s.head_dim for s in spaces}
    if len(head_dims) != 1:
        raise ValueError(f"spaces disagree on head dim {sorted(head_dims)}: profile them separately")
    d = head_dims.pop()
    key = machine_key(settings)
    combos, coarse = [], False
    for s in spaces:
        c, co = layer_combos(s, max_combos)
        combos += c
        coarse = coarse or co
    combos = sorted(set(combos))
    bases = sorted({(h, a * d == h) for h, a, _ in combos})
    runners = {}
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="autodistil-prof-"))
    for h, is_bert in bases:
        a = h // d if is_bert else max(1, (h // d) + 1)
        runners[f"base:{h}:{int(is_bert)}"] = make_runner(make_student(0, h, a, 4 * h, d, vocab), settings, tmp)
    for h, a, r in combos:
        f = int(round(r * h))
        runners[f"two:{h}:{a}:{f}"] = make_runner(make_student(2, h, a, f, d, vocab), settings, tmp)
    anchor = anchor_config(spaces)
    runners["anchor"] = make_runner(make_student(*anchor, d, vocab), settings, tmp)
    calib = []
    if calibrate:
        rng = random.Random(seed + 99991)  # distinct from validation's students
        for k in range(calibrate):
            sp = spaces[k % len(spaces)]
            c = sp.sample(rng)
            calib.append(c)
            runners[f"calib:{k}"] = make_runner(make_student(c.layers, c.hidden, c.heads, c.ffn, d, vocab), settings, tmp)
    res = measure_interleaved(runners, settings, seed, desc="profiling blocks")
    base_rows = []
    for h, is_bert in bases:
        m, sp, _ = res[f"base:{h}:{int(is_bert)}"]
        base_rows.append({"hidden": h, "bert": is_bert, "ms": m, "spread": sp})
    layer_rows = []
    for h, a, r in combos:
        f = int(round(r * h))
        m2, sp2, _ = res[f"two:{h}:{a}:{f}"]
        m0, sp0, _ = res[f"base:{h}:{int(a * d == h)}"]
        layer_rows.append({"hidden": h, "heads": a, "ratio": r, "ffn": f, "ms": max(0.0, (m2 - m0) / 2),
                           "spread": ((sp2 ** 2 + sp0 ** 2) ** 0.5) / 2})
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    table = LatencyTable(key=key, settings=settings.__dict__.copy(), head_dim=d, vocab=vocab,
                         spaces=[s.to_dict() for s in spaces], base=base_rows, layers=layer_rows,
                         meta={"coarse_grid": coarse, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    table.meta["anchor"] = {"model": list(anchor), "ms": res["anchor"][0]}
    if calib:
        meas = [res[f"calib:{k}"][0] for k in range(len(calib))]
        table.meta["calibration"] = {"students": [c.as_dict() for c in calib], "measured_ms": meas,
                                     **table.fit_correction(calib, meas)}
    table.meta["profile_seconds"] = round(time.time() - t0, 1)
    return table
