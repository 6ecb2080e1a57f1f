"""Search engines: exhaustive (the paper's 256-subnet spaces) and evolutionary (mutation +
crossover, seeded) for larger ones, under budgets on FLOPs, params and predicted latency;
Pareto fronts. The objective (lower is better) is any callable subnet -> float; cheap
metrics (latency, MACs, params) decide feasibility before the objective is evaluated."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from ..space import SearchSpace, SubnetConfig


@dataclass(frozen=True)
class Budget:
    latency_ms: Optional[float] = None
    macs: Optional[float] = None  # "FLOPs" as the paper counts them: MACs per sequence
    params: Optional[float] = None
    plain: bool = False  # only shapes that export to the family's plain Hugging Face class

    def __post_init__(self):
        for f in ("latency_ms", "macs", "params"):
            v = getattr(self, f)
            if v is not None and v <= 0:
                raise ValueError(f"budget {f}={v} must be positive")

    def ok(self, m: dict) -> bool:
        return (
            (self.latency_ms is None or m["latency_ms"] <= self.latency_ms)
            and (self.macs is None or m["macs"] <= self.macs)
            and (self.params is None or m["params"] <= self.params)
            and (not self.plain or m.get("plain", False))
        )

    def label(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency<={self.latency_ms:g}ms")
        if self.macs is not None:
            parts.append(f"MACs<={self.macs / 1e9:g}G")
        if self.params is not None:
            parts.append(f"params<={self.params / 1e6:g}M")
        if self.plain:
            parts.append("plain")
        return ",".join(parts) or "unconstrained"


class CountingObjective:
    """Caches objective values and counts distinct evaluations."""

    def __init__(self, fn: Callable[[SubnetConfig], float]):
        self.fn, self.cache = fn, {}

    def __call__(self, cfg: SubnetConfig) -> float:
        if cfg not in self.cache:
            self.cache[cfg] = float(self.fn(cfg))
        return self.cache[cfg]

    @property
    def evaluations(self) -> int:
        return len(self.cache)


def unmet_budget_message(budget: Budget, candidates: Iterable[SubnetConfig], metrics: Callable) -> str:
    cands = list(candidates)
    if not cands:
        return "the search space is empty"
    parts = []
    for key, limit, unit, scale in (
        ("latency_ms", budget.latency_ms, "ms", 1),
        ("macs", budget.macs, "G MACs", 1e9),
        ("params", budget.params, "M params", 1e6),
    ):
        if limit is None:
            continue
        best = min(cands, key=lambda c: metrics(c)[key])
        parts.append(
            f"{key} <= {limit / scale:g}{unit} (smallest achievable: {metrics(best)[key] / scale:.4g}{unit}, "
            f"{best.short()})"
        )
    if budget.plain and not any(metrics(c).get("plain") for c in cands):
        parts.append("plain shapes only, and no subnet of the spaces has heads x head dim == hidden")
    return "no subnet meets the budget " + "; ".join(parts)


def exhaustive(
    candidates: Iterable[SubnetConfig], objective: CountingObjective, metrics: Callable, budget: Budget
) -> Optional[SubnetConfig]:
    feas = [c for c in candidates if budget.ok(metrics(c))]
    if not feas:
        return None
    return min(feas, key=lambda c: (objective(c), metrics(c)["latency_ms"], c))


def _neighbour(vals: tuple, v, rng: random.Random):
    i = vals.index(v) if v in vals else rng.randrange(len(vals))
    j = min(len(vals) - 1, max(0, i + rng.choice((-1, 1))))
    return vals[j]


def evolutionary(
    space: SearchSpace,
    objective: CountingObjective,
    metrics: Callable,
    budget: Budget,
    max_evals: int = 64,
    population: int = 16,
    elites: int = 4,
    p_mutate: float = 0.35,
    seed: int = 0,
    max_tries: int = 2000,
) -> Optional[SubnetConfig]:
    """Seeded evolutionary search. Only feasible candidates are evaluated (feasibility is cheap),
    so `max_evals` counts objective evaluations, not proposals."""
    rng = random.Random(seed)
    dims = ("layers", "hidden", "ffn_ratio", "heads")
    vals = {d: getattr(space, d).values for d in dims}

    def make(d: dict) -> SubnetConfig:
        return SubnetConfig(int(d["layers"]), int(d["hidden"]), float(d["ffn_ratio"]), int(d["heads"]))

    def feasible(c):
        return budget.ok(metrics(c))

    def grow(c: SubnetConfig) -> SubnetConfig:
        """Push a feasible subnet to the budget boundary: step random dimensions up while feasible
        (feasibility is cheap; optima of size-driven objectives sit on that boundary)."""
        d = {k: getattr(c, k) for k in dims}
        order = list(dims)
        improved = True
        while improved:
            improved = False
            rng.shuffle(order)
            for k in order:
                i = vals[k].index(d[k])
                if i + 1 < len(vals[k]):
                    t = dict(d, **{k: vals[k][i + 1]})
                    if feasible(make(t)):
                        d, improved = t, True
        return make(d)

    pop, tries = [], 0
    while len(pop) < population and tries < max_tries:
        c = space.sample(rng)
        tries += 1
        if feasible(c):
            c = grow(c) if len(pop) % 2 == 0 else c
            if c not in pop:
                pop.append(c)
    if not pop:
        return None
    for c in pop:
        objective(c)
    while objective.evaluations < max_evals:
        ranked = sorted((c for c in objective.cache if feasible(c)), key=objective)
        parents = ranked[: max(elites, 2)]
        child, tries = None, 0
        while tries < max_tries:
            tries += 1
            if rng.random() < 0.5:  # local refinement: one dimension of the best one step away
                d = {k: getattr(parents[0], k) for k in dims}
                k = rng.choice(dims)
                i = vals[k].index(d[k])
                d[k] = vals[k][max(0, i - 1)] if rng.random() < 0.6 else _neighbour(vals[k], d[k], rng)
            else:  # uniform crossover of two elites, then mutation
                a, b = rng.sample(parents, 2) if len(parents) >= 2 else (parents[0], parents[0])
                d = {k: getattr(a if rng.random() < 0.5 else b, k) for k in dims}
                for k in dims:
                    if rng.random() < p_mutate:
                        d[k] = _neighbour(vals[k], d[k], rng) if rng.random() < 0.7 else rng.choice(vals[k])
            c = make(d)
            if c in space and feasible(c) and rng.random() < 0.5:
                c = grow(c)  # slide along the budget boundary
            if c in space and feasible(c) and c not in objective.cache:
                child = c
                break
        if child is None:  # the feasible region is exhausted around the elites
            break
        objective(child)
    feas = [c for c in objective.cache if feasible(c)]
    return min(feas, key=lambda c: (objective(c), metrics(c)["latency_ms"], c)) if feas else None


def pareto_front(rows: list[dict], keys: tuple = ("loss", "latency_ms")) -> list[dict]:
    """Rows not dominated in `keys` (all minimised)."""
    front = []
    for r in rows:
        dominated = any(all(o[k] <= r[k] for k in keys) and any(o[k] < r[k] for k in keys) for o in rows)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r[keys[1]])
