import math

import pytest

from autodistil.cost import exact_cost
from autodistil.search.engine import Budget, CountingObjective, evolutionary, exhaustive, pareto_front
from autodistil.search.run import SearchSpec, search
from autodistil.space import PAPER_SPACES, SubnetConfig
from test_latency import _synthetic_table


def _loss(c: SubnetConfig) -> float:
    """A structured, deterministic stand-in for a supernet's held-out loss (bigger is better,
    with diminishing returns and a per-subnet wobble)."""
    p = exact_cost(c, 64).params
    return 1.0 / math.log(p) + 0.0005 * math.sin(7 * c.layers + 3 * c.heads + c.hidden / 32 + 5 * c.ffn_ratio)


def _metrics(c):
    ec = exact_cost(c, 64)
    return {"latency_ms": ec.macs / 1e8 + 0.3 * c.layers, "macs": ec.macs, "params": ec.params}


@pytest.mark.parametrize("budget", [Budget(latency_ms=20.0), Budget(latency_ms=35.0), Budget(macs=1.0e9),
                                    Budget(params=8e6, latency_ms=30.0)])
def test_evolutionary_finds_exhaustive_optimum_with_a_quarter_of_evaluations(budget):
    space = PAPER_SPACES["tiny"]
    ex = CountingObjective(_loss)
    best = exhaustive(space, ex, _metrics, budget)
    assert best is not None and ex.evaluations <= len(space) == 256  # exhaustive: every feasible subnet
    for seed in range(3):
        ev = CountingObjective(_loss)
        got = evolutionary(space, ev, _metrics, budget, max_evals=len(space) // 4, seed=seed)
        assert ev.evaluations <= 64
        assert got == best, (budget, seed)


def test_pareto_front_is_non_dominated():
    rows = [{"loss": _loss(c), "latency_ms": _metrics(c)["latency_ms"]} for c in PAPER_SPACES["tiny"]]
    front = pareto_front(rows)
    assert 1 < len(front) < len(rows)
    for f in front:
        assert not any(o["loss"] <= f["loss"] and o["latency_ms"] <= f["latency_ms"] and o != f and
                       (o["loss"] < f["loss"] or o["latency_ms"] < f["latency_ms"]) for o in rows)
    for r in rows:  # everything off the front is dominated by something on it
        if r not in front:
            assert any(f["loss"] <= r["loss"] and f["latency_ms"] <= r["latency_ms"] for f in front)


def test_search_outputs_and_errors(tmp_path):
    table, _ = _synthetic_table(grid_h=(64, 96, 128), grid_a=(2, 3, 4), grid_r=(2.0, 3.0))
    from autodistil.space import Range, SearchSpace
    sp = SearchSpace("s", Range(1, 3, 1), Range(64, 128, 32), Range(2.0, 3.0, 1.0), Range(2, 4, 1), 32)
    spec = SearchSpec(budgets=[Budget(latency_ms=3.0), Budget(latency_ms=6.0)], method="exhaustive")
    res = search([(sp, _loss)], table, spec, head_dim=32, out_dir=tmp_path)
    assert set(res["best"]) == {"latency<=3ms", "latency<=6ms"}
    assert res["best"]["latency<=6ms"]["loss"] <= res["best"]["latency<=3ms"]["loss"]
    assert all(r["latency_ms"] <= 3.0 for r in [res["best"]["latency<=3ms"]])
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "pareto_front.csv").is_file()
    ev = search([(sp, _loss)], table, SearchSpec(budgets=[Budget(latency_ms=6.0)], method="evolutionary",
                                                 max_evals=12), head_dim=32)
    assert ev["best"]["latency<=6ms"]["loss"] == res["best"]["latency<=6ms"]["loss"]
    with pytest.raises(ValueError, match=r"no subnet meets the budget latency_ms <= 0.5ms \(smallest achievable: "):
        search([(sp, _loss)], table, SearchSpec(budgets=[Budget(latency_ms=0.5)]), head_dim=32)
    with pytest.raises(ValueError, match="a latency budget needs a latency table"):
        search([(sp, _loss)], None, SearchSpec(budgets=[Budget(latency_ms=1.0)]), head_dim=32)
    with pytest.raises(ValueError, match="budget latency_ms=-1 must be positive"):
        Budget(latency_ms=-1)
