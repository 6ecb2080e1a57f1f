"""A correction of the latency table fitted on what budget verification measured.

Verification times finalists end to end with the teacher (or the anchor) in the same rounds. Their
measured / predicted ratios say how far the table is off in that session: the machine's speed since
profiling and the table's own error together. A correction is fitted on them and chosen by its
leave-one-out error among:

  none    measured = predicted
  global  measured = k x predicted
  space   measured = k_s x predicted, one factor per subspace (the global factor for a subspace with fewer
          than 2 measured students)
  size    measured = a x predicted + b: a scale and a fixed cost per call, so that small students can move
          by another share than large ones

Its measured error (the RMS of its leave-one-out relative errors, at least the session's noise) is how far
above a budget a corrected prediction may lie and still be offered to verification. Every correction is
increasing in the prediction, so a limit on corrected latency is a limit on predicted latency (``limit``):
a search under that limit is a search under the corrected table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KINDS = ("none", "global", "space", "size")
MAX_ERR = 0.5  # the offered window never reaches past 1.5x a budget, however poor the fit


@dataclass(frozen=True)
class Correction:
    """measured ~ f(space, predicted), and how well that held out of sample."""

    kind: str = "none"  # none | global | space | size
    params: dict = field(default_factory=dict)  # global: k; space: k, by_space; size: a, b
    err: float = 0.10  # relative error of a corrected prediction (measured)
    n: int = 0  # measured students it was fitted on
    loo: dict = field(default_factory=dict)  # {kind: {"mape", "rms"}} of every kind that could be fitted

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"correction kind {self.kind!r} is not allowed: choose {list(KINDS)}")

    def apply(self, space: str, ms: float) -> float:
        """The corrected prediction of a student of `space` predicted at `ms`."""
        return _apply(self.kind, self.params, space, ms)

    def limit(self, space: str, ms: float) -> float:
        """The predicted latency whose corrected prediction is `ms` (the inverse of ``apply``)."""
        p = self.params
        if self.kind == "none":
            return ms
        if self.kind == "global":
            return ms / p["k"]
        if self.kind == "space":
            return ms / p["by_space"].get(space, p["k"])
        return (ms - p["b"]) / p["a"]

    def describe(self) -> str:
        p = self.params
        what = {
            "none": "none",
            "global": f"global x{p.get('k', 1):.3f}",
            "space": "per space "
            + ", ".join(f"{s} x{k:.3f}" for s, k in sorted(p.get("by_space", {}).items())),
            "size": f"per size {p.get('a', 1):.3f} x predicted {p.get('b', 0):+.2f} ms",
        }[self.kind]
        return f"{what} (error {100 * self.err:.1f}%, {self.n} measured)"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "params": self.params,
            "err": self.err,
            "n": self.n,
            "loo": self.loo,
            "text": self.describe(),
        }


def _apply(kind: str, p: dict, space: str, ms: float) -> float:
    if kind == "none":
        return ms
    if kind == "global":
        return p["k"] * ms
    if kind == "space":
        return p["by_space"].get(space, p["k"]) * ms
    return p["a"] * ms + p["b"]


def _geo_ratio(pts) -> float:
    return math.exp(sum(math.log(m / p) for _, p, m in pts) / len(pts))


def _fit(kind: str, pts: list) -> dict | None:
    """The parameters of one kind fitted on (space, predicted, measured) points; None where it cannot be
    fitted (too few points, predictions too close together, a fit that is not increasing)."""
    if kind == "none":
        return {}
    if not pts:
        return None
    if kind == "global":
        return {"k": _geo_ratio(pts)}
    if kind == "space":
        k = _geo_ratio(pts)
        by = {}
        for s in sorted({s for s, _, _ in pts}):
            own = [x for x in pts if x[0] == s]
            by[s] = _geo_ratio(own) if len(own) >= 2 else k
        return {"k": k, "by_space": by}
    # size: a x p + b by least squares on relative errors (weights 1 / measured^2)
    if len(pts) < 3:
        return None
    ps = [p for _, p, _ in pts]
    if max(ps) < 1.1 * min(ps):
        return None
    w = [1.0 / (m * m) for _, _, m in pts]
    sw = sum(w)
    swp = sum(wi * p for wi, (_, p, _) in zip(w, pts))
    swm = sum(wi * m for wi, (_, _, m) in zip(w, pts))
    swpp = sum(wi * p * p for wi, (_, p, _) in zip(w, pts))
    swpm = sum(wi * p * m for wi, (_, p, m) in zip(w, pts))
    det = sw * swpp - swp * swp
    if det <= 0:
        return None
    a = (sw * swpm - swp * swm) / det
    b = (swm - a * swp) / sw
    if a <= 0:
        return None
    return {"a": a, "b": b}


def fit_correction(
    points: list, noise_pct: float = float("nan"), default_err: float = 0.10, kinds: tuple = KINDS
) -> Correction:
    """The correction of lowest leave-one-out MAPE among `kinds` (ties: the simpler, in KINDS order) fitted
    on `points`, [(space, predicted ms, measured ms)]. With fewer than 2 points nothing can be held out:
    one point gives the global factor, none no correction, and the error is `default_err`. The error is
    never below the session's noise (`noise_pct`, sd in %) nor above MAX_ERR."""
    bad = [x for x in points if not (x[1] > 0 and x[2] > 0 and math.isfinite(x[1]) and math.isfinite(x[2]))]
    if bad:
        raise ValueError(
            f"correction points need positive finite predicted and measured latency, got {bad[:3]}"
        )
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"correction kind {k!r} is not allowed: choose {list(KINDS)}")
    floor = noise_pct / 100 if isinstance(noise_pct, (int, float)) and math.isfinite(noise_pct) else 0.0
    n = len(points)
    if n < 2:
        kind = "global" if n == 1 and "global" in kinds else "none"
        return Correction(kind, _fit(kind, points) or {}, min(MAX_ERR, max(default_err, floor)), n, {})
    loo = {}
    for kind in kinds:
        rel = []
        for i, (s, p, m) in enumerate(points):
            params = _fit(kind, points[:i] + points[i + 1 :])
            if params is None:
                break
            rel.append((_apply(kind, params, s, p) - m) / m)
        else:
            if _fit(kind, points) is not None:
                loo[kind] = {
                    "mape": sum(abs(x) for x in rel) / n,
                    "rms": math.sqrt(sum(x * x for x in rel) / n),
                }
    if not loo:
        return Correction("none", {}, min(MAX_ERR, max(default_err, floor)), n, {})
    best = min(loo, key=lambda k: (round(loo[k]["mape"], 12), KINDS.index(k)))
    err = min(MAX_ERR, max(loo[best]["rms"], floor))
    return Correction(best, _fit(best, points), err, n, loo)
