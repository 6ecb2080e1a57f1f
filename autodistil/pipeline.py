"""`autodistil run`: the whole AutoDistil job in one command, on embedded defaults.

Stages (each caches its output in the run folder and records a marker; a second run skips
finished stages whose settings did not change, and reruns the first changed one and all after):
  train    K-shot supernets distilled from the teacher on unlabeled text (sandwich sampling)
  profile  a latency table of student building blocks on this machine + the teacher's latency
           (both in a fresh process: a process that has just trained times differently)
  search   agnostic search under latency budgets (fractions of the teacher's latency), with the
           loss weights the supernets were trained with; then the best few candidates near each
           budget are measured end to end (fresh process, with the teacher's first-k-layer cuts),
           a second session times those near the budget under predictions scaled by the machine's
           measured speed change, and the best one whose measured latency plus its noise margin
           meets the budget is chosen (a budget none meets is reported)
  export   the chosen student per budget as Hugging Face folders (+ ONNX when asked)
  measure  end-to-end latency of teacher and exported students in a fresh process, the
           report's own latency column (budget, predicted, measured, holds)
  finetune the teacher once (cached across runs), then every student and baseline with the same
           recipe and logits distillation from the fine-tuned teacher
  report   report.md + results.json + PNG plots

Baselines (on by default): for each latency budget, (a) the teacher's first k layers with k the
largest whose latency, measured with the students' finalists at search time, plus its noise margin
meets the budget (the students' rule, in the same session), and (b) the student the FLOPs-
constrained search picks at the same fraction of the teacher's MACs; both are exported, measured
again with the students for the report and fine-tuned with the same recipe, so the report compares
like with like.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .io import atomic_write_json, read_json
from .teacher import DEFAULT_TEACHER

MEASURE_S = 2.5   # seconds of timing per model in the report's measurement (when measure_rounds is None)

STAGES = ("train", "profile", "search", "export", "measure", "finetune", "report")


@dataclass(frozen=True)
class RunConfig:
    """Defaults fit the embedded CPU job (< 30 min on 2 cores); see the README for the paper's setting."""
    out_dir: str = "runs/main"
    teacher: str = DEFAULT_TEACHER
    corpus: str = "treebank"
    task: str = "sentiment"
    spaces: tuple[str, ...] = ("tiny", "small", "base")
    paper_spaces: bool = False
    seed: int = 0
    # supernet training
    train_steps: int = 100
    train_batch: int = 8
    seq_len: int = 128
    train_lr: float = 1e-4
    init: str = "teacher"
    rewire: bool = False                 # init="teacher": importance-ordered slices (nn/rewire.py; measured
                                         # worse for a directly sliced L4-H144 student, see README)
    n_random: int = 2
    max_train_blocks: Optional[int] = 2000
    eval_blocks: int = 16
    deepspeed: Optional[str] = None
    backend: str = "torch"
    # latency
    runtime: str = "torch"
    device: str = "cpu"
    batch: int = 1
    threads: int = 0
    profile_rounds: int = 12
    profile_round_s: float = 0.125       # timed seconds per model per round (bench/protocol_noise.py)
    # grid points per subspace in hidden, heads, FFN width; None: the device's default
    # (latency.profile.default_grid: 3 2 2 on CPU, 3 4 2 on CUDA)
    profile_grid: Optional[tuple[int, ...]] = None
    calibrate: int = 12
    measure_rounds: Optional[int] = None  # None: 2.5 s of timing per model (rounds of profile_round_s)
    verify_top: int = 4                  # candidates measured end to end per budget at search time
    # search
    latency_ms: tuple[float, ...] = ()             # explicit budgets; empty: budget_fractions x teacher latency
    budget_fractions: tuple[float, ...] = (0.15, 0.3)   # x the teacher's latency (0.5 too: ~+7 min)
    heldout_blocks: int = 8
    search_method: str = "auto"
    onnx: bool = False
    baselines: bool = True               # teacher's first k layers + FLOPs-search students, per budget
    # fine-tuning
    teacher_lr: float = 5e-5
    teacher_epochs: float = 1.0
    student_lr: float = 3e-4             # students and baselines (bench/student_recipe.py)
    student_epochs: float = 1.0          # 2 gain 1-2 points but take the job past 30 minutes here
    finetune_max_steps: Optional[int] = None  # overrides both epoch counts (tests)
    finetune_batch: int = 32
    finetune_seq_len: int = 64           # sentiment snippets: 99.95% are <= 64 tokens
    max_train_examples: Optional[int] = None  # the whole train split
    max_eval_examples: Optional[int] = None  # the whole dev split
    kd_alpha: float = 0.5                # logits distillation from the fine-tuned teacher
    cache_dir: Optional[str] = None      # fine-tuned teacher cache (default $AUTODISTIL_CACHE or ~/.cache/autodistil)
    stop_after: Optional[str] = None     # stop after this stage (for staged runs)

    def __post_init__(self):
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ValueError(f"stop_after={self.stop_after!r} is not a stage: {list(STAGES)}")
        if any(f <= 0 or f > 1.5 for f in self.budget_fractions):
            raise ValueError(f"budget_fractions {self.budget_fractions} must be in (0, 1.5]")
        if self.profile_grid is not None and (len(self.profile_grid) != 3 or min(self.profile_grid) < 1):
            raise ValueError(f"profile_grid {self.profile_grid} must be 3 positive counts (hidden, heads, FFN width)")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha={self.kd_alpha} must be within [0, 1]")
        if self.measure_rounds is not None and self.measure_rounds < 2:
            raise ValueError(f"measure_rounds={self.measure_rounds} must be >= 2 (the noise is measured by split "
                             f"halves of the rounds) or None (2.5 s per model at the profile's round length)")
        if self.verify_top < 1:
            raise ValueError(f"verify_top={self.verify_top} must be >= 1 (budgets are verified by measurement)")


# Which config fields each stage depends on (a change reruns that stage and all after it).
_DEPS = {
    "train": ("teacher", "corpus", "spaces", "paper_spaces", "seed", "train_steps", "train_batch", "seq_len",
              "train_lr", "init", "rewire", "n_random", "max_train_blocks", "eval_blocks", "deepspeed", "backend"),
    "profile": ("runtime", "device", "batch", "threads", "profile_rounds", "profile_round_s", "profile_grid",
                "calibrate", "seq_len"),
    "search": ("latency_ms", "budget_fractions", "heldout_blocks", "search_method", "verify_top", "baselines"),
    "export": ("onnx",),
    "measure": ("measure_rounds",),
    "finetune": ("task", "teacher_lr", "teacher_epochs", "student_lr", "student_epochs", "finetune_max_steps",
                 "finetune_batch", "finetune_seq_len", "max_train_examples", "max_eval_examples", "kd_alpha"),
    "report": (),
}

# A stage's output format version: bumped when what it writes changes so that a cached marker from
# older code would break a later stage (search 2: baseline (a) chosen at search time; 3: budgets from
# the teacher timed in the verification session; 4: per-session budgets; report 2: fractional budgets
# judged against the teacher timed in the report's session; 3: fallback budgets judged in ms). A bump makes
# that stage and all after it rerun; stages before it stay cached.
_VERSIONS = {"search": 4, "report": 3}


class Run:
    def __init__(self, cfg: RunConfig, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = {}

    # --- stage bookkeeping -----------------------------------------------------------------
    def _hash(self, stage: str) -> str:
        d = asdict(self.cfg)
        upto = STAGES[: STAGES.index(stage) + 1]
        keys = [k for s in upto for k in _DEPS[s]]
        vals = {k: d[k] for k in keys}
        if "profile_grid" in vals and vals["profile_grid"] is None:  # the grid it stands for: an explicit
            from .latency.profile import default_grid                 # equal grid keeps the cached stages
            vals["profile_grid"] = default_grid(self.cfg.device)
        vals.update({f"version:{s}": _VERSIONS[s] for s in upto if s in _VERSIONS})
        return hashlib.sha256(json.dumps(vals, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def done(self, stage: str) -> Optional[dict]:
        m = self._marker(stage)
        if not m.is_file():
            return None
        d = read_json(m, "stage marker")
        return d if d.get("hash") == self._hash(stage) else None

    def run(self) -> dict:
        t_all = time.time()
        rerun = False
        for stage in STAGES:
            cached = None if rerun else self.done(stage)
            if cached is not None:
                self.log(f"[{stage}] cached ({cached['seconds']:.0f} s when it ran): skipping")
                self.state[stage] = cached["output"]
            else:
                rerun = True  # everything after a rerun stage runs again
                self.log(f"[{stage}] running")
                t = time.time()
                out = getattr(self, f"stage_{stage}")()
                self.state[stage] = out
                atomic_write_json(self._marker(stage), {"stage": stage, "hash": self._hash(stage),
                                                        "seconds": time.time() - t, "output": out})
                self.log(f"[{stage}] done in {time.time() - t:.0f} s")
            if stage == self.cfg.stop_after:
                break
        self.log(f"run finished in {time.time() - t_all:.0f} s -> {self.out}")
        return self.state

    # --- helpers ---------------------------------------------------------------------------
    def _teacher(self):
        if not hasattr(self, "_t"):
            from .nn import TeacherNet
            from .teacher import load_teacher
            hf, tok, info = load_teacher(self.cfg.teacher)
            self._t = (hf, tok, info, TeacherNet(hf, info.shape))
        return self._t

    def _settings(self):
        from .latency.profile import ProfileSettings
        c = self.cfg
        return ProfileSettings(device=c.device, runtime=c.runtime, batch=c.batch, seq_len=c.seq_len,
                               threads=c.threads, rounds=c.profile_rounds, round_s=c.profile_round_s)

    def _supernets(self):
        from .nn import load_supernet
        return [load_supernet(p) for p in self.state["train"]["supernets"]]

    # --- stages ----------------------------------------------------------------------------
    def stage_train(self) -> dict:
        from .distill.train import TrainConfig, train_supernets
        c = self.cfg
        tc = TrainConfig(teacher=c.teacher, corpus=c.corpus, spaces=tuple(c.spaces), paper_spaces=c.paper_spaces,
                         out_dir=str(self.out / "supernets"), seq_len=c.seq_len, batch_size=c.train_batch,
                         steps=c.train_steps, lr=c.train_lr, n_random=c.n_random, init=c.init, rewire=c.rewire,
                         eval_every=max(1, c.train_steps // 4), eval_blocks=c.eval_blocks,
                         ckpt_every=max(1, c.train_steps // 4), max_train_blocks=c.max_train_blocks, seed=c.seed,
                         deepspeed=c.deepspeed, backend=c.backend, resume=True,
                         warmup_steps=max(1, c.train_steps // 10))
        summ = train_supernets(tc)
        return {"supernets": [str(self.out / "supernets" / n) for n in summ], "summary": summ}

    def stage_profile(self) -> dict:
        from .latency.predict import LatencyTable
        from .latency.run_measure import measure_in_subprocess, profile_in_subprocess
        c = self.cfg
        path = profile_in_subprocess(self.state["train"]["supernets"], self.out / "latency_table.json",
                                     self._settings(), c.profile_grid, c.calibrate, log=self.log)
        table = LatencyTable.load(path)
        _, _, info, _ = self._teacher()
        t = measure_in_subprocess(path, {"teacher": info.path}, self.out / "latency" / "teacher.json")
        return {"table": str(path), "teacher_ms": t["models"]["teacher"]["ms"],
                "teacher_noise_sd_ms": t["models"]["teacher"]["noise_sd_ms"],
                "profile_seconds": table.meta["profile_seconds"], "noise": table.meta["noise"],
                "calibration": {k: v for k, v in table.meta.get("calibration", {}).items()
                                if k not in ("students", "measured_ms")}}

    def stage_search(self) -> dict:
        from .cost import exact_cost
        from .data.text import corpus_blocks
        from .latency.predict import LatencyTable
        from .search.engine import Budget
        from .search.run import HeldoutLoss, SearchSpec, format_choice, search
        from .search.verify import verify_search
        c = self.cfg
        nets = self._supernets()
        table = LatencyTable.load(self.state["profile"]["table"])
        hf, tok, info, teacher = self._teacher()
        _, held = corpus_blocks(c.corpus, tok, c.seq_len, max_train_blocks=1, max_eval_blocks=c.heldout_blocks,
                                seed=c.seed)
        t_ms = self.state["profile"]["teacher_ms"]
        budgets_ms = list(c.latency_ms) or [round(f * t_ms, 3) for f in c.budget_fractions]
        pairs, notes = [], {}
        for model, spaces, meta in nets:
            obj = HeldoutLoss.for_supernet(model, meta, teacher, held)
            notes[spaces[0].name] = {"weights": obj.w.__dict__, **obj.note}
            pairs.append((spaces[0], obj))
        head_dim, vocab = nets[0][0].config.head_dim, nets[0][0].config.vocab_size
        # budgets nobody can meet are reported, not fatal: the others still run
        lo = min(table.predict(spaces[0].smallest()) for _, spaces, _ in nets)
        usable = [b for b in budgets_ms if b >= lo]
        skipped = [b for b in budgets_ms if b < lo]
        # fractions of the teacher: final budgets from the teacher timed with the finalists (verify_budgets)
        fractions = None if c.latency_ms else [f for f, b in zip(c.budget_fractions, budgets_ms) if b >= lo]
        if not usable:
            usable, fractions = [round(lo * 1.05, 3)], None
            self.log(f"[search] no budget reachable (smallest student {lo:.2f} ms); using {usable[0]} ms")
        budgets = [Budget(latency_ms=b) for b in usable]
        # baseline (b): the FLOPs-constrained search at the same fraction of the teacher's MACs
        teacher_macs = exact_cost(info.shape.as_subnet(), head_dim, c.seq_len, vocab).macs
        min_macs = min(exact_cost(spaces[0].smallest(), head_dim, c.seq_len, vocab).macs for _, spaces, _ in nets)
        flops_for = {}
        if c.baselines:
            for i, b in enumerate(usable):
                m = round((fractions[i] if fractions is not None else b / t_ms) * teacher_macs)
                if m >= min_macs:
                    flops_for[Budget(latency_ms=b).label()] = Budget(macs=m)
                else:
                    self.log(f"[search] no FLOPs baseline for {b:g} ms: {m / 1e9:.3f} GMACs is below the smallest "
                             f"subnet's {min_macs / 1e9:.3f}")
        res = search(pairs, table, SearchSpec(budgets=budgets + list(flops_for.values()),
                                              method=c.search_method, seed=c.seed, seq_len=c.seq_len),
                     head_dim, vocab, self.out / "search")
        # baseline (a) candidates: the teacher's first k layers, for every k that could fit the largest
        # budget (each layer costs about 1/L of the teacher's latency), timed with the finalists
        L = info.shape.layers
        first_ks = [k for k in range(1, L) if k == 1 or t_ms * k / L <= 1.5 * max(usable)] if c.baselines else []
        ver = verify_search(res["candidates"], usable, nets, self.state["profile"]["table"], self.out / "search",
                            top_k=c.verify_top, teacher=info.path, first_layers=first_ks, fractions=fractions)
        if fractions is not None and ver["teacher_ms"]:
            shown = ", ".join(f"{f:g}x = {b['budget_ms']:g} ms" for f, b in zip(fractions, ver["budgets"]))
            self.log(f"[search] teacher {ver['teacher_ms']:.2f} ms in the verification session (profiled "
                     f"{t_ms:.2f} ms): budgets {shown}")
        elif fractions is not None:
            self.log("[search] warning: the teacher was not timed at verification; the budgets stay fractions "
                     f"of its profiled {t_ms:.2f} ms")
        t_ver = ver["teacher_ms"] or t_ms
        best, unmet, first_for, flops_final = {}, [], {}, {}
        for b, requested in zip(ver["budgets"], usable):
            label = Budget(latency_ms=b["budget_ms"]).label()
            if Budget(latency_ms=requested).label() in flops_for:
                flops_final[label] = flops_for[Budget(latency_ms=requested).label()]
            self.log(f"[search] latency<={b['budget_ms']:g}ms: {b['message']}")
            if b["met"]:
                ch = b["chosen"]
                best[label] = {k: ch[k] for k in ("space", "layers", "hidden", "ffn_ratio", "heads", "loss",
                                                  "latency_ms", "latency_sd_ms", "macs", "params", "measured_ms",
                                                  "margin_ms")}
                best[label]["budget_ms"] = b["budget_ms"]
                best[label]["fraction"] = b["fraction"] if b["fraction"] is not None else b["budget_ms"] / t_ver
                best[label]["fraction_given"] = b["fraction"] is not None  # else explicit / fallback ms budget
                self.log("[search] " + format_choice(f"latency<={b['budget_ms']:g}ms", ch, "loss"))
                if "first_layers" in b:
                    fl = b["first_layers"]
                    first_for[label] = {"chosen": None if fl["chosen"] is None else
                                        {k: fl["chosen"][k] for k in ("name", "layers", "measured_ms", "margin_ms")},
                                        "message": fl["message"]}
                    self.log(f"[search] baseline teacher's first k layers for {label}: {fl['message']}")
            else:
                unmet.append({"budget_ms": b["budget_ms"], "message": b["message"]})
        flops_best = {}
        for label, fb in flops_final.items():
            r = res["best"][fb.label()]
            flops_best[label] = {**{k: r[k] for k in ("space", "layers", "hidden", "ffn_ratio", "heads", "loss",
                                                       "latency_ms", "macs", "params")},
                                 "macs_budget": fb.macs, "macs_fraction": fb.macs / teacher_macs}
            self.log("[search] baseline " + format_choice(f"{fb.label()} (for {label})", r, "loss"))
        return {"budgets_ms": [b["budget_ms"] for b in ver["budgets"]], "requested_budgets_ms": usable,
                "skipped_budgets_ms": skipped,
                "skipped_fractions": [f for f, b in zip(c.budget_fractions, budgets_ms) if b < lo]
                if not c.latency_ms else None, "unmet_budgets": unmet, "best": best,
                "flops_best": flops_best, "first_layers_for": first_for, "teacher_macs": teacher_macs,
                "predicted_best": res["best"], "objective": notes, "front_size": len(res["front"]),
                "evaluations": res["evaluations"], "verification_noise": ver["measurement"].get("noise"),
                "verification_drift": ver["measurement"].get("drift"),
                "verification_second_round": {k: (ver["second_round"] or {}).get(k) for k in (
                    "drift", "noise", "scaled_by", "budgets_moved", "teacher_ms", "budgets_ms")}
                if ver["second_round"] else None,
                "verification_teacher_ms": ver.get("teacher_ms"), "search_dir": str(self.out / "search")}

    def _export_rows(self, rows: dict, kind: str, nets: dict, tok) -> dict:
        """Export {budget label: search row} as student folders (one per distinct subnet)."""
        from .export import export_onnx, export_subnet
        from .search.run import candidate_name
        from .space import SubnetConfig
        out = {}
        for label, r in rows.items():
            cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
            name = candidate_name(r)
            if name not in out:
                folder = self.out / "students" / name
                export_subnet(nets[r["space"]], cfg, folder, tok, self.cfg.seq_len,
                              extra={"budget": label, "space": r["space"], "kind": kind})
                if self.cfg.onnx:
                    export_onnx(folder, seq_len=self.cfg.seq_len)
                out[name] = {"folder": str(folder), "subnet": cfg.as_dict(), "space": r["space"], "kind": kind,
                             "budgets": [], "predicted_ms": r["latency_ms"], "heldout_loss": r["loss"],
                             "verified_ms": r.get("measured_ms")}
            out[name]["budgets"].append(label)
        return out

    def stage_export(self) -> dict:
        from .export import export_first_layers
        nets = {s[1][0].name: s[0] for s in self._supernets()}
        _, tok, info, _ = self._teacher()
        srch = self.state["search"]
        students = self._export_rows(srch["best"], "searched", nets, tok)
        flops = self._export_rows({k: v for k, v in srch.get("flops_best", {}).items() if k in srch["best"]},
                                  "flops-search", nets, tok)  # only for budgets a searched student meets
        first = {}  # baseline (a), as the search's verification chose it per budget
        for label, f in srch["first_layers_for"].items():
            ch = f["chosen"]
            if ch is None:
                continue
            if ch["name"] not in first:
                folder = self.out / "baselines" / ch["name"]
                export_first_layers(info.path, ch["layers"], folder)
                first[ch["name"]] = {"folder": str(folder), "layers": ch["layers"], "budgets": [],
                                     "verified_ms": ch["measured_ms"]}
            first[ch["name"]]["budgets"].append(label)
        return {"students": students, "flops_students": flops, "first_layers": first}

    def stage_measure(self) -> dict:
        """The report's own latency column: a separate measurement in a fresh process (teacher, students
        and baselines in one interleaved session)."""
        from .latency.profile import rounds_for
        from .latency.run_measure import measure_in_subprocess
        _, _, info, _ = self._teacher()
        ex = self.state["export"]
        folders = {"teacher": info.path}
        for group in ("students", "flops_students", "first_layers"):
            for name, s in ex.get(group, {}).items():
                folders[name] = s["folder"]
        rounds = self.cfg.measure_rounds or rounds_for(MEASURE_S, self.cfg.profile_round_s)
        res = measure_in_subprocess(self.state["profile"]["table"], folders, self.out / "latency" / "measure.json",
                                    rounds=rounds)
        out = {k: {"ms": v["ms"], "spread_ms": v["noise_sd_ms"], "low_ms": v["low_ms"],
                   "round_medians_ms": v["round_medians_ms"]} for k, v in res["models"].items()}
        out["_session"] = {"drift": res["drift"], "noise": res["noise"], "threads": res["threads"],
                           "when": res["when"]}
        return out

    def _finetune_jobs(self) -> dict:
        """{name: folder} of every model to fine-tune besides the teacher: the searched students and the
        baselines (each once)."""
        ex = self.state["export"]
        jobs = {n: s["folder"] for n, s in ex["students"].items()}
        jobs.update({n: s["folder"] for n, s in ex.get("flops_students", {}).items()})
        jobs.update({n: s["folder"] for n, s in ex.get("first_layers", {}).items()})
        return jobs

    def finetune_all(self, seed: int, out_root: Optional[Path] = None, log=None, only=None) -> dict:
        """The teacher (fine-tuned once, cached across runs) and every student and baseline with one
        recipe: lr, epochs and logits distillation from the fine-tuned teacher. Also used by
        bench/students_vs_baselines.py with other seeds (`only`: the names to fine-tune)."""
        from .finetune.teacher import finetuned_teacher
        from .finetune.train import finetune
        c = self.cfg
        log = log or self.log
        out_root = Path(out_root or self.out / "finetuned")
        _, _, info, _ = self._teacher()
        t_dir, t_res = finetuned_teacher(info.path, c.task, lr=c.teacher_lr, epochs=c.teacher_epochs,
                                         batch_size=c.finetune_batch, max_seq_len=c.finetune_seq_len, seed=c.seed,
                                         max_train_examples=c.max_train_examples, max_steps=c.finetune_max_steps,
                                         max_eval_examples=c.max_eval_examples, cache_root=c.cache_dir, log=log)
        out = {"teacher": {**t_res, "folder": str(t_dir)}}
        for name, folder in self._finetune_jobs().items():
            if only is not None and name not in only:
                continue
            r = _finetune_cached(self.student_finetune_config(folder, out_root / name, seed, t_dir), finetune)
            log(f"[finetune] {name}: {r['headline']} {r['score']:.4f} ({r['steps']} steps, {r['train_seconds']} s)")
            out[name] = r
        return out

    def student_finetune_config(self, folder, out_dir, seed: int, teacher_dir, lr: Optional[float] = None,
                                epochs: Optional[float] = None, kd_alpha: Optional[float] = None):
        """The run's fine-tuning recipe for one student or baseline (lr, epochs and kd_alpha default
        to the run's; bench/student_recipe.py varies them), distilling from `teacher_dir`."""
        from .finetune.train import FinetuneConfig
        c = self.cfg
        a = c.kd_alpha if kd_alpha is None else kd_alpha
        kd = dict(teacher=str(teacher_dir), kd_alpha=a) if a > 0 else {}
        return FinetuneConfig(model=str(folder), out_dir=str(out_dir), task=c.task,
                              lr=c.student_lr if lr is None else lr,
                              epochs=c.student_epochs if epochs is None else epochs, seed=seed,
                              max_steps=c.finetune_max_steps, batch_size=c.finetune_batch,
                              max_seq_len=c.finetune_seq_len, max_train_examples=c.max_train_examples,
                              max_eval_examples=c.max_eval_examples, **kd)

    def stage_finetune(self) -> dict:
        return self.finetune_all(self.cfg.seed)

    def stage_report(self) -> dict:
        from .report import write_report
        return write_report(self)


def _finetune_cached(fc, fn) -> dict:
    """Each fine-tuning run is itself a resumable unit: a finished one is reused when its config, the
    identity of the model folder it started from and that of the teacher it distilled from (file
    sizes and times: a teacher fine-tuned again in place changes it) are the same."""
    from .finetune.train import reusable_result, weights_identity
    ident = {"model_identity": weights_identity(fc.model),
             "teacher_identity": weights_identity(fc.teacher) if fc.teacher else None}
    ident = json.loads(json.dumps(ident))  # as finetune_results.json holds it
    r = reusable_result(fc.out_dir, fc, **ident)
    if r is None:
        r = fn(fc, extra=ident)
    return {k: v for k, v in r.items() if k != "log"}


def run_pipeline(cfg: RunConfig, log=print) -> dict:
    return Run(cfg, log).run()
