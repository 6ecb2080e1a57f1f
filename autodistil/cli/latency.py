"""Latency commands: profile a device, predict from a table, measure folders (and judge shipped
students against their budgets on the target), validate a table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..space import SubnetConfig
from .common import add_space_source_args, add_subnet_args, spaces_for, subnet_from_args


def _settings_from_json(a, given: list):
    """ProfileSettings from --settings JSON; a measurement flag given beside it is refused (it would be
    ignored), also one given at its default value, and every value must have its field's type."""
    from ..latency.profile import ProfileSettings

    try:
        d = json.loads(a.settings)
    except json.JSONDecodeError as e:
        raise ValueError(f"profile: --settings is not JSON ({e}); expected ProfileSettings.to_dict() output")
    if not isinstance(d, dict):
        raise ValueError(
            f"profile: --settings must be a JSON object of ProfileSettings fields, got {type(d).__name__}"
        )
    if given:
        raise ValueError(
            f"profile: {', '.join(given)} given beside --settings, which sets every measurement "
            f"setting; put them in the JSON instead"
        )

    def typed(v, want) -> bool:
        if want is bool:
            return isinstance(v, bool)
        if want is int:
            return isinstance(v, int) and not isinstance(v, bool)
        if want is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        if want is list:  # depths
            return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        return isinstance(v, want)

    ref = ProfileSettings().to_dict()
    for k, v in d.items():
        if k in ref and not typed(v, type(ref[k])):
            raise ValueError(
                f"profile: --settings field {k!r} is {v!r} ({type(v).__name__}), expected "
                f"{type(ref[k]).__name__}"
            )
    return ProfileSettings.from_dict(d)


def _teacher_model(name: str):
    from transformers import AutoModel
    from ..teacher import resolve_teacher_path

    return AutoModel.from_pretrained(resolve_teacher_path(name)).eval()


def cmd_profile(a):
    from ..config import build_dataclass
    from ..latency.profile import ProfileSettings, build_table

    given = [
        f"--{f.name.replace('_', '-')}"
        for f in dataclasses.fields(ProfileSettings)
        if getattr(a, f.name, None) is not None
    ]
    st = _settings_from_json(a, given) if a.settings is not None else build_dataclass(ProfileSettings, {}, a)
    if a.supernet:
        from ..nn.checkpoint import read_meta
        from ..space import SearchSpace

        spaces = [SearchSpace.from_dict(d) for p in a.supernet for d in read_meta(p)["spaces"]]
        vocab = read_meta(a.supernet[0])["model"].get("vocab_size", 30522)
    else:
        spaces, vocab = list(spaces_for(a).values()), 30522
    teacher = (a.teacher, _teacher_model(a.teacher)) if a.time_teacher else None
    table = build_table(
        spaces, st, vocab=vocab, grid=a.grid, calibrate=a.calibrate, budget_s=a.budget_s, teacher=teacher
    )
    table.save(a.out)
    print(
        f"latency table ({len(table.rows)} entries over {len(table.meta['models'])} timed models, "
        f"{table.meta['profile_seconds']} s, threads {table.meta['threads'].get('threads')}, affinity "
        f"{table.meta['threads'].get('affinity')}) for {table.describe_key()} -> {a.out}"
    )
    if table.meta.get("teacher"):
        t = table.meta["teacher"]
        print(
            f"teacher {t['name']}: {t['ms']:.3f} ms end to end in the same session "
            f"(noise sd {t['noise_sd_ms']:.3f})"
        )
    if table.meta.get("stopped_early"):
        print(f"note: stopped early by --budget-s after {table.meta['rounds_done']} of {st.rounds} rounds")
    n = table.meta["noise"]
    print(
        f"noise of the {st.stat} (split halves of the rounds): sd {n['sd_pct']:.2f}% per model; "
        f"halves differ by {n['halves_mape_pct']:.2f}% on average; "
        f"anchor spread {table.meta['anchor']['spread_pct']:.1f}%"
    )
    cal = table.meta.get("calibration")
    if cal:
        print(
            f"block sums vs {len(cal['measured_ms'])} calibration students measured end to end: MAPE "
            f"{100 * cal['raw_mape']:.1f}% (bias {100 * cal['raw_bias']:+.1f}%); learned correction "
            f"{'used' if cal['used'] else 'not used'}"
            + (f" (leave-one-out MAPE {100 * cal['loo_mape']:.1f}%)" if 'loo_mape' in cal else "")
        )


def table_settings(table, rounds=None, round_s=None):
    from ..latency.profile import ProfileSettings

    st = ProfileSettings.from_dict(table.settings)
    if rounds:
        st = dataclasses.replace(st, rounds=rounds)
    if round_s:
        st = dataclasses.replace(st, round_s=round_s)
    return st


def cmd_validate(a):
    from ..latency.predict import LatencyTable
    from ..latency.validate import validate_table
    from ..space import SearchSpace

    table = LatencyTable.load(a.table)
    st = table_settings(table, a.rounds, a.round_s)
    spaces = [SearchSpace.from_dict(d) for d in table.spaces]
    rep = validate_table(table, spaces, st, a.n, a.seed, a.out)
    print(format_validation(rep))


def format_validation(rep) -> str:
    lines = [
        "| scope | n | MAPE % | bias % | within 5 % | within 10 % | MAPE % (drift-adj.) | tau | "
        "tau beyond noise (pairs) | FLOPs tau beyond noise | MAPE % (low pct.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, st in [("all", rep["overall"]), *rep["per_space"].items()]:
        lines.append(
            f"| {name} | {st['n']} | {st['mape_pct']:.2f} | {st['bias_pct']:+.2f} | {st['within_5_pct']:.0f} "
            f"| {st['within_10_pct']:.0f} | {st['mape_pct_drift_adjusted']:.2f} | {st['kendall_tau']:.3f} | "
            f"{st['kendall_tau_beyond_noise']:.3f} ({st['pairs_beyond_noise']}/{st['pairs_total']}) | "
            f"{st['flops_kendall_tau_beyond_noise']:.3f} | {st['mape_pct_low']:.2f} |"
        )
    n = rep["noise"]
    lines.append(
        f"machine speed drift since profiling (anchor now / then): {rep['machine_drift']:.3f}; anchor spread "
        f"within this session {rep['anchor_spread_pct']:.1f}%"
    )
    lines.append(
        f"noise of the {rep['stat']} (split halves of the rounds): sd {n['sd_pct']:.2f}% per student; halves "
        f"differ by {n['halves_mape_pct']:.2f}% on average (90th pct {n['halves_p90_pct']:.2f}%)"
    )
    lines.append(
        f"threads {rep['threads'].get('threads')}, affinity {rep['threads'].get('affinity')}, load average "
        f"before {rep['threads'].get('loadavg')} after {rep['loadavg_after']}, {rep['seconds']:.0f} s, "
        f"{rep['when']}"
    )
    return "\n".join(lines)


def cmd_predict(a):
    from ..io import atomic_write_json
    from ..latency.predict import LatencyTable
    from ..space import SearchSpace

    if a.rounds is not None and (not a.reanchor or a.rounds < 2):
        raise ValueError(
            f"--rounds {a.rounds}: it sets the rounds of --reanchor's anchor timing and must be >= 2 "
            f"(default: the table's)"
        )
    table = LatencyTable.load(a.table)
    spaces = [SearchSpace.from_dict(d) for d in table.spaces]
    flags = [a.layers, a.hidden, a.ffn_ratio, a.heads]
    if any(v is not None for v in flags) and not all(v is not None for v in flags):
        raise ValueError("give all four of --layers --hidden --ffn-ratio --heads, or none (and --subnet)")
    cfgs = ([subnet_from_args(a)] if flags[0] is not None else []) + [SubnetConfig.parse(t) for t in a.subnet]
    if not cfgs:
        raise ValueError(
            "no subnet: give --layers --hidden --ffn-ratio --heads and/or --subnet L6-H384-R4-A12"
        )
    rows = []
    for c in cfgs:
        inside = [s.name for s in spaces if c in s]
        if not inside and not a.allow_outside_space:
            raise ValueError(
                f"subnet {c.short()} is in none of the table's spaces "
                f"({'; '.join(s.describe() for s in spaces)}); pass --allow-outside-space to "
                f"extrapolate anyway"
            )
        rows.append(
            {
                "subnet": c.short(),
                "space": inside[0] if inside else None,
                "class": "plain" if c.heads * table.head_dim == c.hidden else "AutoDistilBertModel",
            }
        )
    speed = None
    if a.reanchor:
        from ..latency.validate import speed_now

        speed = speed_now(table, table_settings(table, a.rounds))
        table = table.rescaled(speed["factor"])
    for r, c in zip(rows, cfgs):
        ms, sd = table.predict_with_uncertainty(c)
        r.update(ms=ms, sd_ms=sd, low_ms=table.predict_low(c))
    print(f"latency table for {table.describe_key()}")
    if speed:
        print(
            f"anchor now {speed['anchor_ms']:.3f} ms, at profiling {speed['table_anchor_ms']:.3f} ms: "
            f"predictions scaled by {speed['factor']:.3f} (timed over {speed['seconds']:.1f} s; "
            f"anchor spread {speed['anchor_spread_pct']:.0f} % within this session)"
        )
    else:
        print(
            "predictions at the machine's speed when it was profiled "
            f"({table.meta.get('created', 'time unknown')}; --reanchor: at its speed now)"
        )
    for r in rows:
        where = f"space {r['space']}" if r["space"] else "outside the table's spaces"
        print(
            f"{r['subnet']}: {r['ms']:.3f} ms +- {r['sd_ms']:.3f} (low percentile {r['low_ms']:.3f} ms; "
            f"{where}, exports as {r['class']})"
        )
    if a.out:
        atomic_write_json(
            a.out, {"table": str(a.table), "key": table.key, "speed": speed, "predictions": rows}
        )


def cmd_measure(a):
    from ..io import atomic_write_json
    from ..latency.predict import LatencyTable
    from ..latency.validate import measure_folders

    table = LatencyTable.load(a.table)
    folders = {}
    for m in a.model or []:
        name, sep, folder = m.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--model {m!r}: expected NAME=FOLDER")
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        folders[name] = folder
    manifest = None
    if a.ship:
        from ..ship import check_manifest_stat, shipped_folders

        if not a.teacher:
            raise ValueError(
                "--ship needs --teacher: budgets are judged against the teacher timed in the same rounds"
            )
        manifest, shipped = shipped_folders(a.ship)
        check_manifest_stat(manifest, table)  # before anything is timed
        folders.update(shipped)
    if a.teacher:
        from ..teacher import resolve_teacher_path

        folders["teacher"] = resolve_teacher_path(a.teacher)
    if not folders:
        raise ValueError(
            "nothing to measure: give --model NAME=FOLDER and/or --ship RUN/ship --teacher TEACHER"
        )
    res = measure_folders(folders, table, table_settings(table, a.rounds))
    res["stat"] = table.settings.get("stat", "median")  # what every "ms" figure is
    if manifest is not None:
        from ..ship import judge_budgets

        res["budgets"] = judge_budgets(manifest, res, table)
    atomic_write_json(a.out, res)
    from ..latency.profile import stat_tag

    low_pct = table.settings.get("low_pct", 10.0)
    tag = stat_tag(table.settings.get("stat", "median"), low_pct)
    for k, v in res["models"].items():
        print(
            f"{k}: {tag} {v['ms']:.3f} ms (noise sd {v['noise_sd_ms']:.3f} ms, low p{low_pct:g} "
            f"{v['low_ms']:.3f} ms)"
        )
    for b in res.get("budgets", []):
        print(f"{b['budget']}: {b['student']} {b['verdict']}")
    print(f"anchor drift since profiling {res['drift']:.3f}; load average {res['threads'].get('loadavg')}")


def register(sub):
    from ..config import add_dataclass_args
    from ..latency.profile import ProfileSettings

    pr = sub.add_parser(
        "profile",
        help="measure a latency table of student building blocks on this device (the "
        "teacher timed in the same session)",
    )
    add_space_source_args(pr)
    pr.add_argument(
        "--supernet", action="append", help="take the spaces from these supernet folders (repeatable)"
    )
    add_dataclass_args(pr, ProfileSettings)
    pr.add_argument(
        "--grid",
        type=int,
        nargs=3,
        default=None,
        metavar=("H", "A", "F"),
        help="grid points per subspace in hidden, heads, FFN width (trilinear interpolation between; "
        "default 3 2 2 on CPU, 3 4 2 on CUDA, where latency is not linear in heads)",
    )
    pr.add_argument(
        "--calibrate",
        type=int,
        default=12,
        help="random full students measured end to end in the same session (block sums checked against "
        "them; a linear correction kept only if leave-one-out error improves; 0: none)",
    )
    pr.add_argument(
        "--time-teacher",
        action=__import__("argparse").BooleanOptionalAction,
        default=True,
        help="time --teacher end to end in the same session: budgets given as fractions of the "
        "teacher's latency need it (default: on)",
    )
    pr.add_argument(
        "--budget-s", type=float, default=None, help="stop after the round in progress past this time"
    )
    pr.add_argument(
        "--settings",
        default=None,
        metavar="JSON",
        help="every measurement setting at once, as ProfileSettings.to_dict() JSON (replaces the "
        "--device ... --cuda-graphs flags; how a fresh-process profile gets all of them)",
    )
    pr.add_argument("--out", required=True, help="the table's JSON path")
    pr.set_defaults(fn=cmd_profile)

    v = sub.add_parser("latency-validate", help="predicted vs measured latency of exported random students")
    v.add_argument("--table", required=True, help="the latency table to validate (from `autodistil profile`)")
    v.add_argument("--n", type=int, default=24, help="number of random students (default: 24)")
    v.add_argument("--seed", type=int, default=1, help="seed of the students' draw (default: 1)")
    v.add_argument("--rounds", type=int, default=None, help="measurement rounds (default: the table's)")
    v.add_argument(
        "--round-s", type=float, default=None, help="seconds per model per round (default: the table's)"
    )
    v.add_argument("--out", required=True, help="the folder for the report, its CSV and its plot")
    v.set_defaults(fn=cmd_validate)

    pd = sub.add_parser(
        "predict",
        help="predicted latency of subnets from a latency table (optionally at the machine's speed now)",
    )
    pd.add_argument("--table", required=True, help="latency table JSON (from `autodistil profile`)")
    add_subnet_args(pd, required=False)
    pd.add_argument(
        "--subnet",
        action="append",
        default=[],
        metavar="L6-H384-R4-A12",
        help="more subnets, each as layers-hidden-MLP ratio-heads (repeatable)",
    )
    pd.add_argument(
        "--reanchor",
        action="store_true",
        help="time the table's anchor now (its protocol, about rounds x round_s seconds, on the device "
        "the table was built on) and scale every prediction by the anchor's time now over its time "
        "at profiling: the machine's speed change since then",
    )
    pd.add_argument("--rounds", type=int, default=None, help="with --reanchor: rounds (default: the table's)")
    pd.add_argument(
        "--allow-outside-space",
        action="store_true",
        help="predict subnets in none of the table's spaces too (extrapolated from its grid)",
    )
    pd.add_argument("--out", default=None, help="also write the predictions as JSON here")
    pd.set_defaults(fn=cmd_predict)

    me = sub.add_parser(
        "measure",
        help="end-to-end latency of Hugging Face folders with a table's protocol and "
        "anchor; with --ship, judge a run's shipped students against their budgets",
    )
    me.add_argument("--table", required=True, help="latency table whose settings and anchor to use")
    me.add_argument(
        "--model", action="append", metavar="NAME=FOLDER", help="a Hugging Face folder to time (repeatable)"
    )
    me.add_argument(
        "--ship",
        default=None,
        metavar="RUN/ship",
        help="a run's ship/ folder: time every shipped student and judge each budget against the "
        "teacher timed in the same rounds (needs --teacher)",
    )
    me.add_argument("--teacher", default=None, help="the teacher's folder, timed in the same rounds")
    me.add_argument("--rounds", type=int, default=None, help="measurement rounds (default: the table's)")
    me.add_argument("--out", required=True, help="JSON file for the measurements")
    me.set_defaults(fn=cmd_measure)
