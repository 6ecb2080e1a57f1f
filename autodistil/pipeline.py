"""`autodistil run`: the whole AutoDistil job in one command, on embedded defaults or on what a
deployment team brings (a teacher, labelled files, a latency table from the target device).

Before the first stage every input is checked in seconds (``Run.check``): the teacher loads and its
family is supported, the task or files load with their labels, the budgets are valid, a given table
matches the run, the run folder is writable. A bad input fails there with one line and leaves no
run folder behind.

Stages (each caches its output in the run folder and records a marker; a second run skips finished
stages whose settings did not change, and reruns the first changed one and all after):
  train    K-shot supernets distilled from the teacher on unlabeled text (sandwich sampling)
  profile  a latency table of student building blocks on this machine, the teacher timed in the
           same session (a fresh process: a process that has just trained times differently);
           or, with ``table``, the table profiled on the target device, checked and used as it is
  search   agnostic search under latency budgets (ms, or fractions of the teacher's latency), with
           the loss weights the supernets were trained with; on this machine the best few
           candidates near each budget are measured end to end with the teacher and the best one
           whose measured latency plus its noise margin meets the budget is chosen; with a table
           from another device the choice is by prediction, kept under the budget by the table's
           own measured prediction error
  export   the chosen student per budget as Hugging Face folders
  measure  end-to-end latency of teacher, students and baselines in one fresh-process session
           (this machine; skipped with a table from another device: the report gives the command
           to run there)
  finetune the teacher (used as it is when it is already a classifier for the task; else
           fine-tuned once and cached across runs), then every student and baseline with one
           recipe and logits distillation from it
  ship     per budget, the fine-tuned student (classification head, tokenizer, ONNX when asked,
           checked against torch) in ship/, with a manifest
  report   report.md + results.json + PNG plots

Baselines (on by default): per budget, (a) the teacher's first k layers with k the largest whose
latency, measured with the students' finalists at search time, plus its noise margin meets the
budget (the students' rule, in the same session; this machine only), and (b) the student the
FLOPs-constrained search picks at the same fraction of the teacher's MACs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .config import flat_values, to_plain
from .data.tasks import DataConfig
from .distill.train import TrainConfig
from .finetune.train import FinetuneConfig
from .io import atomic_write_json, read_json
from .latency.profile import ProfileSettings
from .teacher import DEFAULT_TEACHER

MEASURE_S = 2.5  # seconds of timing per model in the report's measurement (when measure_rounds is None)

STAGES = ("train", "profile", "search", "export", "measure", "finetune", "ship", "report")


@dataclass(frozen=True)
class SearchConfig:
    """How students are chosen under the budgets."""

    latency_ms: tuple[float, ...] = ()  # latency budgets in ms, one student each, on latency_stat of one
    # call at the profile's batch, seq len and threads (default:
    # budget_fractions x the teacher's latency)
    budget_fractions: tuple[float, ...] = (0.15, 0.3)  # budgets as fractions of the teacher's latency (its
    # latency_stat per call), timed with the finalists (or
    # taken from a --table)
    latency_stat: str = "median"  # what a budget bounds: median (of per-call latency) or a percentile
    # such as p90 (a tail-latency budget), taken over anchor-normalised runs
    # (each run divided by the anchor model's speed at its time, so
    # whole-machine slowdowns that also slow the anchor are taken out);
    # the table is profiled, and students verified and measured, for it
    heldout_blocks: int = 8  # held-out text blocks the agnostic objective (distillation loss) is scored on
    method: str = "auto"  # auto | exhaustive | evolutionary
    verify_top: int = 4  # candidates per budget measured end to end at search time (this machine)
    verify_rounds: int = 4  # verification sessions at most: after each, the table is corrected
    # from what was measured and the search's new candidates are timed with the choices; the last
    # allowed session offers nothing new, so a corrected search needs 3 or more
    baselines: bool = True  # also ship-test the teacher's first k layers and the FLOPs-search student
    plain_only: bool = False  # only shapes that load without autodistil: heads x head dim == hidden
    # (the family's plain Hugging Face class)

    def __post_init__(self):
        if any(not (0 < f <= 1.5) for f in self.budget_fractions):
            raise ValueError(f"budget_fractions {list(self.budget_fractions)} must each be in (0, 1.5]")
        if any(not (b > 0) for b in self.latency_ms):
            raise ValueError(
                f"latency_ms {list(self.latency_ms)} must each be a positive number of milliseconds"
            )
        if not self.latency_ms and not self.budget_fractions:
            raise ValueError("no budget: give --latency-ms or --budget-fractions")
        if self.verify_rounds < 1:
            raise ValueError(
                f"verify_rounds={self.verify_rounds} must be >= 1 (verification sessions at most)"
            )
        from .latency.profile import check_stat

        object.__setattr__(self, "latency_stat", check_stat(self.latency_stat, "latency_stat"))  # p05 is p5
        if self.verify_top < 1:
            raise ValueError(
                f"verify_top={self.verify_top} must be >= 1 (budgets are verified by measurement)"
            )
        if self.heldout_blocks < 1:
            raise ValueError(f"heldout_blocks={self.heldout_blocks} must be >= 1")
        if self.method not in ("auto", "exhaustive", "evolutionary"):
            raise ValueError(f"method {self.method!r} is not allowed: auto | exhaustive | evolutionary")


@dataclass(frozen=True)
class ProfileConfig(ProfileSettings):
    """How latency is measured on this machine (ignored with a --table from the target device)."""

    grid: Optional[tuple[int, ...]] = (
        None  # grid points per subspace in hidden, heads, FFN width (default: 3 2 2
    )
    # on CPU, 3 4 2 on CUDA)
    calibrate: int = 12  # random students measured end to end in the profile session (checks
    # the block sums; a correction kept only if it helps out of sample)

    def __post_init__(self):
        super().__post_init__()
        if self.grid is not None and (len(self.grid) != 3 or min(self.grid) < 1):
            raise ValueError(f"profile grid {self.grid} must be 3 positive counts (hidden, heads, FFN width)")
        if self.calibrate < 0:
            raise ValueError(f"calibrate={self.calibrate} must be >= 0")

    def settings(self) -> ProfileSettings:
        return ProfileSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ProfileSettings)})


@dataclass(frozen=True)
class RunFinetuneConfig(FinetuneConfig):
    """The fine-tuning recipe of the run: students and baselines; the teacher differs in lr and epochs."""

    teacher_lr: float = 5e-5  # the teacher's learning rate (when it is not already fine-tuned)
    teacher_epochs: float = 1.0  # the teacher's epochs; 0: no training (the teacher must already be a
    # classifier for the task)

    def _needs_teacher(self) -> bool:
        return False  # the run gives the students the fine-tuned teacher to distil from


def _run_train_defaults() -> TrainConfig:
    return TrainConfig(steps=100, max_train_blocks=2000, eval_blocks=16, resume=True)


def _run_finetune_defaults() -> RunFinetuneConfig:
    return RunFinetuneConfig(lr=3e-4, epochs=1.0, max_seq_len="auto", kd_alpha=0.5)


@dataclass(frozen=True)
class RunConfig:
    """The whole job. Defaults: the embedded CPU job (< 30 min on 2 cores)."""

    out_dir: str = "runs/main"  # the run folder: every stage's output, the report and ship/
    teacher: str = (
        DEFAULT_TEACHER  # a Hugging Face folder or hub id (BERT, RoBERTa/XLM-R, ELECTRA, DistilBERT;
    )
    # already fine-tuned on your task or not), or the embedded default
    data: DataConfig = field(default_factory=DataConfig, metadata={"flatten": True})
    table: Optional[str] = None  # a latency table profiled on the target device (`autodistil profile`
    # there); default: profile this machine
    seed: int = 0  # seed of supernet training, search and fine-tuning
    train: TrainConfig = field(
        default_factory=_run_train_defaults, metadata={"owned": ("teacher", "out_dir", "resume", "seed")}
    )
    profile: ProfileConfig = field(default_factory=ProfileConfig, metadata={"owned": ("stat",)})
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"flatten": True})
    measure_rounds: Optional[int] = (
        None  # rounds of the report's measurement (default: 2.5 s of timing per model)
    )
    onnx: bool = False  # also ship each fine-tuned student as ONNX, checked against torch
    finetune: RunFinetuneConfig = field(
        default_factory=_run_finetune_defaults,
        metadata={"owned": ("model", "data", "out_dir", "teacher", "seed")},
    )
    cache_dir: Optional[str] = (
        None  # fine-tuned teacher cache (default: $AUTODISTIL_CACHE or ~/.cache/autodistil)
    )
    stop_after: Optional[str] = (
        None  # stop after this stage (train, profile, search, export, measure, finetune,
    )
    # ship)

    def __post_init__(self):
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ValueError(f"stop_after={self.stop_after!r} is not a stage: {list(STAGES)}")
        if self.measure_rounds is not None and self.measure_rounds < 2:
            raise ValueError(
                f"measure_rounds={self.measure_rounds} must be >= 2 (the noise is measured by split "
                f"halves of the rounds) or None (2.5 s per model at the profile's round length)"
            )

    def to_dict(self) -> dict:
        return to_plain(self)


# What each stage depends on: top-level fields and whole sections ("name." prefixes). A change reruns
# that stage and all after it.
_DEPS = {
    "train": ("teacher", "seed", "train."),
    "profile": ("table", "profile.", "search.latency_stat"),
    "search": ("search.",),
    "export": (),
    "measure": ("measure_rounds",),
    "finetune": ("data.", "finetune."),
    "ship": ("onnx",),
    "report": (),
}

# A stage's output format version: bumped when what it writes changes so that a cached marker from
# older code would break a later stage. A bump makes that stage and all after it rerun; stages
# before it stay cached.
_VERSIONS = {"profile": 2, "search": 9, "finetune": 2, "ship": 1, "report": 6}


def _matches(key: str, deps: tuple) -> bool:
    return any(key == d or (d.endswith(".") and key.startswith(d)) for d in deps)


MIN_STEPS = 100  # fewer optimizer steps than this, from epochs: too few to learn a task (warned)


def few_steps_warning(name: str, steps: int, batch_size: int, epochs: float, max_steps) -> Optional[str]:
    """A warning when `name` trained fewer than MIN_STEPS optimizer steps because its data set is small
    for the recipe's epochs (not when the user capped the steps with max_steps, nor for a teacher used as
    it is, 0 steps); None otherwise."""
    if max_steps is not None or not 0 < steps < MIN_STEPS:
        return None
    return (
        f"[finetune] warning: {name} trained {steps} optimizer steps ({epochs:g} epoch(s) at batch "
        f"{batch_size}): too few to learn a task; a small data set needs more epochs "
        f"(--finetune-teacher-epochs, --finetune-epochs) or a smaller --finetune-batch-size"
    )


class Run:
    def __init__(self, cfg: RunConfig, log=print):
        self.cfg, self.log = cfg, log
        self.out = (
            Path(cfg.out_dir).expanduser().absolute()
        )  # stage records hold paths: resumable from any cwd
        self.state = {}
        self.inputs = None  # what check() found: teacher, task, table

    # --- stage bookkeeping -----------------------------------------------------------------
    def _hash(self, stage: str) -> str:
        flat = flat_values(self.cfg)
        upto = STAGES[: STAGES.index(stage) + 1]
        vals = {k: v for k, v in flat.items() if any(_matches(k, _DEPS[s]) for s in upto)}
        if "profile.grid" in vals and vals["profile.grid"] is None:  # the grid it stands for: an explicit
            from .latency.profile import default_grid  # equal grid keeps the cached stages

            vals["profile.grid"] = default_grid(self.cfg.profile.device)
        if "teacher" in vals:  # the teacher's weights, not its name
            vals["teacher"] = self._teacher_identity()
        if vals.get("table"):  # the table's contents, not its name
            vals["table_sha256"] = _file_sha(self.cfg.table)
        if "data.train_file" in vals and self.cfg.data.files:
            from .data.tasks import data_identity

            vals["data_identity"] = data_identity(self.cfg.data)
        vals.update({f"version:{s}": _VERSIONS[s] for s in upto if s in _VERSIONS})
        return hashlib.sha256(json.dumps(vals, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _teacher_identity(self) -> str:
        """sha256 of the teacher's config and weights (a folder named two ways is one teacher); the name
        itself where it does not resolve (the up-front check reports that)."""
        if not hasattr(self, "_tid"):
            from .teacher import resolve_teacher_path, teacher_hash

            try:
                self._tid = teacher_hash(resolve_teacher_path(self.cfg.teacher))
            except (FileNotFoundError, ConnectionError, ValueError):
                self._tid = f"name:{self.cfg.teacher}"
        return self._tid

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
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "run_config.json", self.cfg.to_dict())
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
                atomic_write_json(
                    self._marker(stage),
                    {"stage": stage, "hash": self._hash(stage), "seconds": time.time() - t, "output": out},
                )
                self.log(f"[{stage}] done in {time.time() - t:.0f} s")
            if stage == self.cfg.stop_after:
                break
        self.log(f"run finished in {time.time() - t_all:.0f} s -> {self.out}")
        return self.state

    # --- up-front checks ---------------------------------------------------------------------
    def check(self) -> dict:
        """Every input checked before the first stage (seconds, no weights loaded beyond the task's
        data): raises ValueError / FileNotFoundError / ConnectionError with one line on a bad one."""
        from .preflight import check_run

        if self.inputs is None:
            self.inputs = check_run(self.cfg, self.log)
        return self.inputs

    # --- helpers ---------------------------------------------------------------------------
    def _teacher(self):
        if not hasattr(self, "_t"):
            from .nn import TeacherNet
            from .teacher import load_teacher

            hf, tok, info = load_teacher(self.cfg.teacher)
            self._t = (hf, tok, info, TeacherNet(hf, info.shape))
        return self._t

    @property
    def foreign_table(self) -> bool:
        """A table from the target device: nothing measured here stands for it."""
        return self.cfg.table is not None

    def _supernets(self):
        from .nn import load_supernet

        return [load_supernet(p) for p in self.state["train"]["supernets"]]

    # --- stages ----------------------------------------------------------------------------
    def profile_settings(self) -> ProfileSettings:
        """How this machine is profiled: the profile section, for the statistic the budgets bound."""
        return replace(self.cfg.profile.settings(), stat=self.cfg.search.latency_stat)

    def stage_train(self) -> dict:
        from .distill.train import train_supernets

        tc = replace(
            self.cfg.train,
            teacher=self.cfg.teacher,
            out_dir=str(self.out / "supernets"),
            resume=True,
            seed=self.cfg.seed,
        )
        summ = train_supernets(tc)
        return {"supernets": [str(self.out / "supernets" / n) for n in summ], "summary": summ}

    def stage_profile(self) -> dict:
        from .latency.predict import LatencyTable

        if self.foreign_table:
            return self._use_table()
        from .latency.run_measure import profile_in_subprocess

        c = self.cfg
        _, _, info, _ = self._teacher()
        path = profile_in_subprocess(
            self.state["train"]["supernets"],
            self.out / "latency_table.json",
            self.profile_settings(),
            c.profile.grid,
            c.profile.calibrate,
            log=self.log,
            teacher=info.path,
        )
        table = LatencyTable.load(path)
        t = table.meta["teacher"]
        return {
            "table": str(path),
            "teacher_ms": t["ms"],
            "teacher_noise_sd_ms": t["noise_sd_ms"],
            "foreign": False,
            "profile_seconds": table.meta["profile_seconds"],
            "noise": table.meta["noise"],
            "calibration": _calibration_summary(table),
        }

    def _use_table(self) -> dict:
        """The target device's table, copied into the run folder (the run's record of what it searched on)."""
        from .latency.predict import LatencyTable

        dst = self.out / "latency_table.json"
        shutil.copyfile(self.cfg.table, dst)
        table = LatencyTable.load(dst)
        t = table.meta.get("teacher") or {}
        self.log(
            f"[profile] using the table profiled on {table.describe_key()} ({self.cfg.table}); nothing is "
            f"timed on this machine"
        )
        return {
            "table": str(dst),
            "teacher_ms": t.get("ms"),
            "teacher_noise_sd_ms": t.get("noise_sd_ms"),
            "foreign": True,
            "source": str(self.cfg.table),
            "device": table.describe_key(),
            "profile_seconds": table.meta.get("profile_seconds"),
            "noise": table.meta.get("noise"),
            "calibration": _calibration_summary(table),
        }

    def stage_search(self) -> dict:
        from .search.stage import run_search_stage

        return run_search_stage(self)

    def _export_rows(self, rows: dict, kind: str, nets: dict, tok) -> dict:
        """Export {budget label: search row} as student folders (one per distinct subnet)."""
        from .export import export_subnet
        from .search.run import candidate_name
        from .space import SubnetConfig

        out = {}
        for label, r in rows.items():
            cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
            name = candidate_name(r)
            if name not in out:
                folder = self.out / "students" / name
                export_subnet(
                    nets[r["space"]],
                    cfg,
                    folder,
                    tok,
                    self.cfg.profile.seq_len,
                    extra={"budget": label, "space": r["space"], "kind": kind},
                )
                out[name] = {
                    "folder": str(folder),
                    "subnet": cfg.as_dict(),
                    "space": r["space"],
                    "kind": kind,
                    "budgets": [],
                    "predicted_ms": r["latency_ms"],
                    "heldout_loss": r["loss"],
                    "verified_ms": r.get("measured_ms"),
                }
            out[name]["budgets"].append(label)
        return out

    def stage_export(self) -> dict:
        from .export import export_first_layers

        nets = {s[1][0].name: s[0] for s in self._supernets()}
        _, tok, info, _ = self._teacher()
        srch = self.state["search"]
        students = self._export_rows(srch["best"], "searched", nets, tok)
        flops = self._export_rows(
            {k: v for k, v in srch.get("flops_best", {}).items() if k in srch["best"]},
            "flops-search",
            nets,
            tok,
        )  # only for budgets a searched student meets
        first = {}  # baseline (a), as the search's verification chose it per budget
        for label, f in srch["first_layers_for"].items():
            ch = f["chosen"]
            if ch is None:
                continue
            if ch["name"] not in first:
                folder = self.out / "baselines" / ch["name"]
                export_first_layers(info.path, ch["layers"], folder)
                first[ch["name"]] = {
                    "folder": str(folder),
                    "layers": ch["layers"],
                    "budgets": [],
                    "verified_ms": ch["measured_ms"],
                }
            first[ch["name"]]["budgets"].append(label)
        return {"students": students, "flops_students": flops, "first_layers": first}

    def _model_folders(self) -> dict:
        _, _, info, _ = self._teacher()
        ex = self.state["export"]
        folders = {"teacher": info.path}
        for group in ("students", "flops_students", "first_layers"):
            for name, s in ex.get(group, {}).items():
                folders[name] = s["folder"]
        return folders

    def stage_measure(self) -> dict:
        """The report's own latency column: a separate measurement in a fresh process (teacher, students
        and baselines in one interleaved session). With a table from another device nothing is timed
        here: the latency column is the table's prediction, and the report gives the command that
        measures the shipped students on the target."""
        if self.foreign_table:
            self.log(
                "[measure] skipped: the table comes from another device; this machine's latency says "
                "nothing about it (the report gives the `autodistil measure` command for the target)"
            )
            return {"_session": None, "skipped": "foreign table"}
        from .latency.profile import rounds_for
        from .latency.run_measure import measure_in_subprocess

        rounds = self.cfg.measure_rounds or rounds_for(MEASURE_S, self.cfg.profile.round_s)
        res = measure_in_subprocess(
            self.state["profile"]["table"],
            self._model_folders(),
            self.out / "latency" / "measure.json",
            rounds=rounds,
        )
        out = {
            k: {
                "ms": v["ms"],
                "spread_ms": v["noise_sd_ms"],
                "low_ms": v["low_ms"],
                "round_medians_ms": v["round_medians_ms"],
            }
            for k, v in res["models"].items()
        }
        out["_session"] = {
            "drift": res["drift"],
            "noise": res["noise"],
            "threads": res["threads"],
            "when": res["when"],
        }
        return out

    def _finetune_jobs(self) -> dict:
        """{name: folder} of every model to fine-tune besides the teacher: the searched students and the
        baselines (each once)."""
        ex = self.state["export"]
        jobs = {n: s["folder"] for n, s in ex["students"].items()}
        jobs.update({n: s["folder"] for n, s in ex.get("flops_students", {}).items()})
        jobs.update({n: s["folder"] for n, s in ex.get("first_layers", {}).items()})
        return jobs

    def seq_len(self) -> tuple[int, Optional[dict]]:
        """The fine-tuning sequence length: the recipe's, or 'auto' resolved once on the train split with
        the teacher's tokenizer (teacher and students then read the same tokens)."""
        ft = self.cfg.finetune
        if ft.max_seq_len != "auto":
            return int(ft.max_seq_len), None
        from .data.tasks import load_data
        from .finetune.train import _subset, resolve_seq_len

        _, tok, _, _ = self._teacher()
        spec, ds = load_data(self.cfg.data)
        return resolve_seq_len("auto", spec, _subset(ds["train"], ft.max_train_examples, self.cfg.seed), tok)

    def finetune_all(self, seed: int, out_root: Optional[Path] = None, log=None) -> dict:
        """The teacher (used as it is, or fine-tuned once and cached across runs) and every student and
        baseline with one recipe: lr, epochs and logits distillation from the fine-tuned teacher."""
        from .finetune.teacher import finetuned_teacher
        from .finetune.train import finetune

        c, ft = self.cfg, self.cfg.finetune
        log = log or self.log
        out_root = Path(out_root or self.out / "finetuned")
        _, _, info, _ = self._teacher()
        seq, auto = self.seq_len()
        if auto:
            log(
                f"[finetune] max_seq_len auto: {seq} tokens hold {100 * auto['coverage']:.2f}% of the "
                f"{auto['examples']} train examples whole (longest {auto['longest']})"
            )
        t_dir, t_res = finetuned_teacher(
            info.path,
            c.data,
            lr=ft.teacher_lr,
            epochs=ft.teacher_epochs,
            batch_size=ft.batch_size,
            max_seq_len=seq,
            seed=c.seed,
            max_train_examples=ft.max_train_examples,
            max_steps=ft.max_steps,
            max_eval_examples=ft.max_eval_examples,
            cache_root=c.cache_dir,
            log=log,
        )
        w = few_steps_warning(
            "the teacher", t_res.get("steps", 0), ft.batch_size, ft.teacher_epochs, ft.max_steps
        )
        if w:
            log(w)
        out = {"teacher": {**t_res, "folder": str(t_dir)}, "_seq_len": {"max_seq_len": seq, "auto": auto}}
        for name, folder in self._finetune_jobs().items():
            r = _finetune_cached(
                self.student_finetune_config(folder, out_root / name, seed, t_dir, seq), finetune
            )
            log(
                f"[finetune] {name}: {r['headline']} {r['score']:.4f} "
                f"({r['steps']} steps, {r['train_seconds']} s)"
            )
            w = few_steps_warning(name, r["steps"], ft.batch_size, ft.epochs, ft.max_steps)
            if w:
                log(w)
            out[name] = r
        return out

    def student_finetune_config(
        self, folder, out_dir, seed: int, teacher_dir, max_seq_len: int, **overrides
    ) -> FinetuneConfig:
        """The run's fine-tuning recipe for one student or baseline, distilling from `teacher_dir`;
        `overrides` replace recipe fields (lr, epochs, kd_alpha, ...)."""
        ft = self.cfg.finetune
        base = {f.name: getattr(ft, f.name) for f in dataclasses.fields(FinetuneConfig)}
        base.update(
            model=str(folder),
            out_dir=str(out_dir),
            data=self.cfg.data,
            seed=seed,
            max_seq_len=max_seq_len,
            teacher=str(teacher_dir),
            **overrides,
        )
        if base["kd_alpha"] == 0 and base["hidden_weight"] == 0:
            base["teacher"] = None
        return FinetuneConfig(**base)

    def stage_finetune(self) -> dict:
        return self.finetune_all(self.cfg.seed)

    def stage_ship(self) -> dict:
        from .ship import ship_students

        return ship_students(self)

    def stage_report(self) -> dict:
        from .report import write_report

        return write_report(self)


def _calibration_summary(table) -> dict:
    return {
        k: v for k, v in table.meta.get("calibration", {}).items() if k not in ("students", "measured_ms")
    }


def _file_sha(path) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else f"missing:{path}"


def _finetune_cached(fc, fn) -> dict:
    """Each fine-tuning run is itself a resumable unit: a finished one is reused when its config, the
    data it was trained on, the identity of the model folder it started from and that of the teacher
    it distilled from (file sizes and times: a teacher fine-tuned again in place changes it) are the
    same."""
    from .finetune.train import reusable_result, weights_identity

    ident = {
        "model_identity": weights_identity(fc.model),
        "teacher_identity": weights_identity(fc.teacher) if fc.teacher else None,
    }
    ident = json.loads(json.dumps(ident))  # as finetune_results.json holds it
    r = reusable_result(fc.out_dir, fc, **ident)
    if r is None:
        r = fn(fc, extra=ident)
    return {k: v for k, v in r.items() if k != "log"}


def run_pipeline(cfg: RunConfig, log=print) -> dict:
    return Run(cfg, log).run()


__all__ = ["RunConfig", "SearchConfig", "ProfileConfig", "RunFinetuneConfig", "Run", "run_pipeline", "STAGES"]
