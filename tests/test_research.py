"""verify_search's `research` (search/run.py research_fn): a limit below every subnet of a space is skipped,
any other error of the search is raised, and the evolutionary search gets the caller's max_evals."""

import pytest

from autodistil.latency.profile import ProfileSettings, build_table
from autodistil.search.engine import CountingObjective
from autodistil.search.run import research_fn
from autodistil.space import Range, SearchSpace, SubnetConfig
from test_latency import SyntheticDevice

HEAD_DIM = 32


def _loss(c: SubnetConfig) -> float:
    """Bigger is better, with a deterministic wobble (a stand-in for the held-out loss)."""
    return 1.0 / (c.layers * c.hidden * c.ffn_ratio * c.heads) + 1e-6 * ((7 * c.layers + 3 * c.heads) % 5)


@pytest.fixture(scope="module")
def case():
    """450 subnets (more than an evolutionary search's evaluations), the smallest not plain (3 heads x 32 !=
    64 hidden), and a synthetic device's table."""
    sp = SearchSpace("r", Range(1, 6, 1), Range(64, 128, 16), Range(2.0, 4.0, 0.5), Range(3, 5, 1), HEAD_DIM)
    table = build_table(
        [sp],
        ProfileSettings(rounds=2, round_s=0.05),
        grid=(2, 2, 2),
        calibrate=0,
        device=SyntheticDevice(seed=9),
    )
    return sp, table


def _research(case, method="exhaustive", plain=False, max_evals=None):
    sp, table = case
    obj = CountingObjective(_loss)
    kw = {} if max_evals is None else {"max_evals": max_evals}
    return obj, research_fn([(sp, obj)], table, method, 0, 128, HEAD_DIM, 1000, plain, **kw)


def test_research_skips_only_a_limit_no_subnet_is_predicted_under(case):
    sp, table = case
    low, high = table.predict(sp.smallest()), table.predict(sp.largest())
    obj, research = _research(case)
    assert research({"r": [0.5 * low]}) == [] and obj.evaluations == 0  # below every subnet: skipped
    rows = research({"r": [0.5 * low, (low + high) / 2], "other": [high]})
    assert len(rows) == len(sp) and all(r["space"] == "r" for r in rows)  # exhaustive: every subnet
    # plain only: a limit under the smallest subnet but not under any plain one (heads x 32 == hidden)
    plain_min = min(table.predict(c) for c in sp if c.heads * HEAD_DIM == c.hidden)
    assert plain_min > low
    assert _research(case, plain=True)[1]({"r": [(low + plain_min) / 2]}) == []
    assert _research(case, plain=True)[1]({"r": [plain_min]})
    # any other error of the search is raised (it was swallowed as "no subnet under the limit")
    with pytest.raises(ValueError, match="search method 'bogus' is not allowed"):
        _research(case, method="bogus")[1]({"r": [high]})


def test_research_passes_max_evals_to_the_evolutionary_search(case):
    sp, table = case
    limit = table.predict(sp.largest())
    obj, research = _research(case, method="evolutionary", max_evals=20)
    research({"r": [limit]})
    assert 0 < obj.evaluations <= 20
    obj, research = _research(case, method="evolutionary")  # SearchSpec's default: 64
    research({"r": [limit]})
    assert 20 < obj.evaluations <= 64


def test_research_offers_a_feasible_subnet_an_evolutionary_search_missed(case, monkeypatch):
    """An evolutionary search samples a bounded number of subnets and can miss a small feasible region that
    exists: `search` then raises UnmetBudget, and research offers the subnet it found under the limit
    instead of aborting the verification."""
    import autodistil.search.run as run_mod

    sp, table = case
    low = table.predict(sp.smallest())
    monkeypatch.setattr(run_mod, "evolutionary", lambda *a, **k: None)  # a search that finds nothing
    obj, research = _research(case, method="evolutionary")
    rows = research({"r": [low * 1.001]})
    assert [(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"]) for r in rows] == [
        (sp.smallest().layers, sp.smallest().hidden, sp.smallest().ffn_ratio, sp.smallest().heads)
    ]
    assert rows[0]["latency_ms"] <= low * 1.001 and rows[0]["loss"] == _loss(sp.smallest())
