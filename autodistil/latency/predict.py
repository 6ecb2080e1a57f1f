"""Latency tables (one JSON file, keyed by where and how they were measured) and the predictor:
    latency(L, h, a, f) = intercept(h, a, f) + L * slope(h, a, f)      (+ optional linear correction)
slope and intercept come from a least-squares line over depth at each point of a coarse
(hidden, heads, FFN width) grid per subspace and are interpolated trilinearly (exact on grid
points and for any cost multilinear in h, a, f). Students that export as BertModel
(heads x head_dim == hidden) use the BertModel entries measured for their (hidden, heads),
interpolated linearly in FFN width; unmeasured ones use the grid plus the mean BertModel offset.
A linear correction fitted on calibration students (measured end to end in the profiling
session) is kept only when its leave-one-out error beats the uncorrected predictor."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_json, read_json
from ..space import SubnetConfig

TABLE_FORMAT, TABLE_VERSION = "autodistil-latency-table", 2
COMPARE_KEYS = (
    "device_type",
    "device_name",
    "driver",
    "torch",
    "runtime",
    "dtype",
    "batch",
    "seq_len",
    "threads",
    "onnxruntime",
    "cuda_graphs",
    "cpu_id",
)
# compared only when both keys record them (tables profiled before a field was added stay usable)
OPTIONAL_KEYS = ("cpu_id",)


@dataclass
class LatencyTable:
    key: dict
    settings: dict
    head_dim: int
    vocab: int
    spaces: list
    grids: list  # [{space, hidden: [...], heads: [...], ffn: [...]}]
    rows: list  # [{kind: grid|bert, space, hidden, heads, ffn, cls, slope_ms, intercept_ms, ...}]
    meta: dict = field(default_factory=dict)
    correction: dict | None = None  # {"a": slope, "b": intercept_ms, "rel_sd": residual sd}
    # the machine's speed at use over its speed at profiling (the anchor now / then; 1: as profiled):
    # every prediction is multiplied by it (``rescaled``); a use-time setting, never saved
    speed: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.speed, (int, float)) and math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(
                f"latency table speed factor must be a positive finite number, got {self.speed!r}"
            )
        if not self.rows:
            raise ValueError("latency table has no entries")
        self._grid = {}
        for r in self.rows:
            if r["kind"] == "grid":
                self._grid[(r["space"], r["hidden"], r["heads"], r["ffn"])] = r
        self._bert = {}
        for r in self.rows:
            if r["kind"] == "bert":
                self._bert.setdefault((r["hidden"], r["heads"]), []).append(r)
        for v in self._bert.values():
            v.sort(key=lambda r: r["ffn"])
        for g in self.grids:
            for h in g["hidden"]:
                for a in g["heads"]:
                    for f in g["ffn"]:
                        if (g["space"], h, a, f) not in self._grid:
                            raise ValueError(f"latency table lacks grid point {g['space']} h={h} a={a} f={f}")
        self._bert_offset = None
        offs = []
        for (h, a), rs in self._bert.items():
            for r in rs:
                g = self._grid_interp(h, a, r["ffn"])
                offs.append((r["slope_ms"] - g[0], r["intercept_ms"] - g[1]))
        if offs:
            self._bert_offset = (sum(o[0] for o in offs) / len(offs), sum(o[1] for o in offs) / len(offs))

    # --- files ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        return atomic_write_json(
            path,
            {
                "format": TABLE_FORMAT,
                "version": TABLE_VERSION,
                "key": self.key,
                "settings": self.settings,
                "head_dim": self.head_dim,
                "vocab": self.vocab,
                "spaces": self.spaces,
                "grids": self.grids,
                "rows": self.rows,
                "meta": self.meta,
                "correction": self.correction,
            },
        )

    @classmethod
    def load(cls, path) -> "LatencyTable":
        d = read_json(path, "latency table")
        if d.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path} is not an autodistil latency table (format={d.get('format')!r})")
        if d.get("version") != TABLE_VERSION:
            raise ValueError(
                f"{path}: table version {d.get('version')}, this autodistil reads version "
                f"{TABLE_VERSION}; profile again with `autodistil profile`"
            )
        try:
            return cls(
                d["key"],
                d["settings"],
                d["head_dim"],
                d["vocab"],
                d["spaces"],
                d["grids"],
                d["rows"],
                d.get("meta", {}),
                d.get("correction"),
            )
        except KeyError as e:
            raise ValueError(f"latency table {path} lacks {e}") from None

    def describe_key(self) -> str:
        k = self.key
        return (
            f"{k.get('device_name')} ({k.get('device_type')}, {k.get('runtime')}, {k.get('dtype')}, "
            f"batch {k.get('batch')}, seq {k.get('seq_len')}, threads {k.get('threads', '-')}, "
            f"torch {k.get('torch')})"
        )

    def same_device(self, other_key: dict) -> list[str]:
        """Fields in which another measurement key differs (empty: same device and settings); an
        OPTIONAL_KEYS field counts only where both keys record it."""
        return [
            k
            for k in COMPARE_KEYS
            if self.key.get(k) != other_key.get(k)
            and not (k in OPTIONAL_KEYS and (self.key.get(k) is None or other_key.get(k) is None))
        ]

    @property
    def anchor_ms(self) -> float | None:
        a = self.meta.get("anchor")
        return a.get("ms") if a else None

    @property
    def noise_sd_pct(self) -> float:
        """sd of one measured statistic in % (split halves of the profiling session)."""
        return float(self.meta.get("noise", {}).get("sd_pct", float("nan")))

    # --- prediction ----------------------------------------------------------------------
    def _choose_grid(self, h, a, f) -> dict:
        def dist(g):
            d = 0.0
            for v, vals in ((h, g["hidden"]), (a, g["heads"]), (f, g["ffn"])):
                lo, hi = vals[0], vals[-1]
                span = max(hi - lo, 1)
                d += (max(lo - v, 0, v - hi) / span) ** 2
            return d

        return min(self.grids, key=dist)

    def _grid_interp(self, h, a, f, low: bool = False) -> tuple:
        """(slope, intercept, slope_sd, intercept_sd) interpolated trilinearly."""
        g = self._choose_grid(h, a, f)
        ks = ("low_slope_ms", "low_intercept_ms") if low else ("slope_ms", "intercept_ms")
        acc = [0.0, 0.0, 0.0, 0.0]
        for hv, wh in _bracket(g["hidden"], h):
            for av, wa in _bracket(g["heads"], a):
                for fv, wf in _bracket(g["ffn"], f):
                    r = self._grid[(g["space"], hv, av, fv)]
                    w = wh * wa * wf
                    acc[0] += w * r[ks[0]]
                    acc[1] += w * r[ks[1]]
                    acc[2] += abs(w) * _finite(r.get("slope_sd_ms"))
                    acc[3] += abs(w) * _finite(r.get("intercept_sd_ms"))
        return tuple(acc)

    def _parts(self, cfg: SubnetConfig, low: bool = False) -> tuple:
        h, a, f = cfg.hidden, cfg.heads, cfg.ffn
        if a * self.head_dim == h:
            rs = self._bert.get((h, a))
            if rs:
                ks = ("low_slope_ms", "low_intercept_ms") if low else ("slope_ms", "intercept_ms")
                acc = [0.0, 0.0, 0.0, 0.0]
                for fv, w in _bracket([r["ffn"] for r in rs], f):
                    r = next(x for x in rs if x["ffn"] == fv)
                    acc[0] += w * r[ks[0]]
                    acc[1] += w * r[ks[1]]
                    acc[2] += abs(w) * _finite(r.get("slope_sd_ms"))
                    acc[3] += abs(w) * _finite(r.get("intercept_sd_ms"))
                return tuple(acc)
            s, i, ssd, isd = self._grid_interp(h, a, f, low)
            if self._bert_offset:
                s, i = s + self._bert_offset[0], i + self._bert_offset[1]
            return s, i, ssd, isd
        return self._grid_interp(h, a, f, low)

    def raw(self, cfg: SubnetConfig, low: bool = False) -> tuple[float, float]:
        """(ms, sd) from the blocks alone: intercept + L * slope."""
        s, i, ssd, isd = self._parts(cfg, low)
        return i + cfg.layers * s, math.sqrt(isd**2 + (cfg.layers * ssd) ** 2)

    def predict(self, cfg: SubnetConfig) -> float:
        return self.predict_with_uncertainty(cfg)[0]

    def predict_low(self, cfg: SubnetConfig) -> float:
        """The low percentile of the latency (blocks alone, no correction)."""
        return self.raw(cfg, low=True)[0] * self.speed

    def predict_with_uncertainty(self, cfg: SubnetConfig) -> tuple[float, float]:
        ms, sd = self.raw(cfg)
        if self.correction:
            ms = self.correction["a"] * ms + self.correction["b"]
            sd = math.sqrt(sd**2 + (self.correction.get("rel_sd", 0.0) * ms) ** 2)
        return ms * self.speed, sd * self.speed

    def rescaled(self, speed: float) -> "LatencyTable":
        """This table predicting at another machine speed (the anchor timed at use over the anchor at
        profiling: ``latency.validate.speed_now``); the table itself is left as it is."""
        return LatencyTable(
            self.key,
            self.settings,
            self.head_dim,
            self.vocab,
            self.spaces,
            self.grids,
            self.rows,
            self.meta,
            self.correction,
            speed,
        )

    def fit_correction(self, cfgs: list, measured_ms: list) -> dict:
        """Fit ms_true ~ a * ms_raw + b on calibration students; keep it only if leave-one-out
        error beats the uncorrected predictor. Returns a report (block-sum MAPE included)."""
        if self.speed != 1.0:
            raise ValueError(
                f"fit_correction on a table rescaled by {self.speed:g}: fit it on the table as profiled "
                f"(its calibration students are measured in the profiling session)"
            )
        raw = [self.raw(c)[0] for c in cfgs]
        n = len(raw)
        base_err = sum(abs(r - m) / m for r, m in zip(raw, measured_ms)) / n
        bias = sum((r - m) / m for r, m in zip(raw, measured_ms)) / n
        if n < 4:
            self.correction = None
            return {
                "used": False,
                "reason": f"{n} calibration students (need >= 4)",
                "raw_mape": base_err,
                "raw_bias": bias,
            }
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
        return {"used": used, "raw_mape": base_err, "raw_bias": bias, "loo_mape": loo_err, "a": a, "b": b}


def _finite(x) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else 0.0


def _bracket(grid: list, x) -> list[tuple]:
    """[(grid value, weight)] for linear interpolation; exact on grid points, linear
    extrapolation from the end segment outside."""
    grid = sorted(grid)
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
