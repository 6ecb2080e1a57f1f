"""Latency tables (one JSON file, keyed by where and how they were measured) and the predictor:
    latency(L, h, a, r) = base(h) + L * layer(h, a, r)      (+ optional linear correction)
layer() is interpolated trilinearly over the measured (hidden, heads, ratio) grid (exact on grid
points), base() linearly over hidden. The prediction carries an uncertainty from the spread of
the measurements (and the correction's residuals when one is fitted)."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_json, read_json
from ..space import SubnetConfig

TABLE_FORMAT, TABLE_VERSION = "autodistil-latency-table", 1
COMPARE_KEYS = ("device_type", "device_name", "driver", "torch", "runtime", "dtype", "batch", "seq_len", "threads",
                "onnxruntime")


@dataclass
class LatencyTable:
    key: dict
    settings: dict
    head_dim: int
    vocab: int
    spaces: list
    base: list            # [{hidden, bert, ms, spread}]
    layers: list          # [{hidden, heads, ratio, ffn, ms, spread}]
    meta: dict = field(default_factory=dict)
    correction: dict | None = None  # {"a": slope, "b": intercept_ms, "rel_sd": residual sd}

    def __post_init__(self):
        self._layer = {(r["hidden"], r["heads"], float(r["ratio"])): r for r in self.layers}
        self._hs = sorted({k[0] for k in self._layer})
        self._as = sorted({k[1] for k in self._layer})
        self._rs = sorted({k[2] for k in self._layer})
        if not self._layer:
            raise ValueError("latency table has no layer entries")

    # --- files ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        return atomic_write_json(path, {"format": TABLE_FORMAT, "version": TABLE_VERSION, "key": self.key,
                                        "settings": self.settings, "head_dim": self.head_dim, "vocab": self.vocab,
                                        "spaces": self.spaces, "base": self.base, "layers": self.layers,
                                        "meta": self.meta, "correction": self.correction})

    @classmethod
    def load(cls, path) -> "LatencyTable":
        d = read_json(path, "latency table")
        if d.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path} is not an autodistil latency table (format={d.get('format')!r})")
        if d.get("version") != TABLE_VERSION:
            raise ValueError(f"{path}: table version {d.get('version')}, this autodistil reads {TABLE_VERSION}")
        try:
            return cls(d["key"], d["settings"], d["head_dim"], d["vocab"], d["spaces"], d["base"], d["layers"],
                       d.get("meta", {}), d.get("correction"))
        except KeyError as e:
            raise ValueError(f"latency table {path} lacks {e}") from None

    def describe_key(self) -> str:
        k = self.key
        return (f"{k.get('device_name')} ({k.get('device_type')}, {k.get('runtime')}, {k.get('dtype')}, "
                f"batch {k.get('batch')}, seq {k.get('seq_len')}, threads {k.get('threads', '-')}, torch {k.get('torch')})")

    def same_device(self, other_key: dict) -> list[str]:
        """Fields in which another measurement key differs (empty: same device and settings)."""
        return [k for k in COMPARE_KEYS if self.key.get(k) != other_key.get(k)]

    # --- prediction ----------------------------------------------------------------------
    def _layer_ms(self, h: int, a: int, r: float) -> tuple[float, float]:
        key = (h, a, float(r))
        if key in self._layer:
            e = self._layer[key]
            return e["ms"], e["spread"]
        ms, sd, wsum = 0.0, 0.0, 0.0
        for (hv, wh) in _bracket(self._hs, h):
            for (av, wa) in _bracket(self._as, a):
                for (rv, wr) in _bracket(self._rs, float(r)):
                    e = self._layer.get((hv, av, rv))
                    if e is None:
                        raise ValueError(f"latency table has no entry near hidden={h}, heads={a}, ratio={r} "
                                         f"(missing grid point {hv}, {av}, {rv}); profile this space")
                    w = wh * wa * wr
                    ms += w * e["ms"]
                    sd += w * e["spread"]
                    wsum += w
        return ms / wsum, sd / wsum

    def _base_ms(self, h: int, bert: bool) -> tuple[float, float]:
        rows = [r for r in self.base if r["bert"] == bert] or self.base
        hs = sorted({r["hidden"] for r in rows})
        by = {r["hidden"]: r for r in rows}
        ms = sd = 0.0
        for hv, w in _bracket(hs, h):
            ms += w * by[hv]["ms"]
            sd += w * by[hv]["spread"]
        return ms, sd

    def raw(self, cfg: SubnetConfig) -> tuple[float, float]:
        """(ms, sd) from blocks alone."""
        lm, ls = self._layer_ms(cfg.hidden, cfg.heads, cfg.ffn_ratio)
        bm, bs = self._base_ms(cfg.hidden, cfg.heads * self.head_dim == cfg.hidden)
        return bm + cfg.layers * lm, math.sqrt(bs ** 2 + (cfg.layers * ls) ** 2)

    def predict(self, cfg: SubnetConfig) -> float:
        return self.predict_with_uncertainty(cfg)[0]

    def predict_with_uncertainty(self, cfg: SubnetConfig) -> tuple[float, float]:
        ms, sd = self.raw(cfg)
        if self.correction:
            ms = self.correction["a"] * ms + self.correction["b"]
            sd = math.sqrt(sd ** 2 + (self.correction.get("rel_sd", 0.0) * ms) ** 2)
        return ms, sd

    def fit_correction(self, cfgs: list, measured_ms: list) -> dict:
        """Fit ms_true ~ a * ms_raw + b on calibration students; keep it only if leave-one-out
        error beats the uncorrected predictor. Returns a report."""
        raw = [self.raw(c)[0] for c in cfgs]
        n = len(raw)
        base_err = sum(abs(r - m) / m for r, m in zip(raw, measured_ms)) / n
        if n < 4:
            return {"used": False, "reason": f"{n} calibration students (need >= 4)", "raw_mape": base_err}
        loo = []
        for i in range(n):
            xs = [r for j, r in enumerate(raw) if j != i]
            ys = [m for j, m in enumerate(measured_ms) if j != i]
            a, b = _linfit(xs, ys)
            loo.append(abs(a * raw[i] + b - measured_ms[i]) / measured_ms[i])
        loo_err = sum(loo) / n
        a, b = _linfit(raw, measured_ms)
        rel = [((a * r + b) - m) / m for r, m in zip(raw, measured_ms)]
        rel_sd = math.sqrt(sum(x * x for x in rel) / max(1, n - 2))
        used = loo_err < base_err
        self.correction = {"a": a, "b": b, "rel_sd": rel_sd} if used else None
        return {"used": used, "raw_mape": base_err, "loo_mape": loo_err, "a": a, "b": b}


def _bracket(grid: list, x) -> list[tuple]:
    """[(grid value, weight)] for linear interpolation; exact on grid points, clamped linear
    extrapolation outside."""
    if x in grid:
        return [(x, 1.0)]
    if len(grid) == 1:
        return [(grid[0], 1.0)]
    i = bisect.bisect_left(grid, x)
    i = min(max(i, 1), len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    t = (x - lo) / (hi - lo)
    return [(lo, 1 - t), (hi, t)]


def _linfit(xs, ys) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    vx = sum((x - mx) ** 2 for x in xs)
    if vx == 0:
        return 1.0, my - mx
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / vx
    return a, my - a * mx
