"""`autodistil run`: the whole AutoDistil job in one command, on embedded defaults.

Stages (each caches its output in the run folder and records a marker; a second run skips
finished stages whose settings did not change, and reruns the first changed one and all after):
  train    K-shot supernets distilled from the teacher on unlabeled text (sandwich sampling)
  profile  a latency table of student building blocks on this machine + the teacher's latency
           (both in a fresh process: a process that has just trained times differently)
  search   agnostic search under latency budgets (fractions of the teacher's latency), with the
           loss weights the supernets were trained with; then the best few candidates near each
           budget are measured end to end (fresh process) and the best one whose measured latency
           plus its noise margin meets the budget is chosen (a budget none meets is reported)
  export   the chosen student per budget as Hugging Face folders (+ ONNX when asked)
  measure  end-to-end latency of teacher and exported students in a fresh process, the
           report's own latency column (budget, predicted, measured, holds)
  finetune teacher and students on the task (optional logits distillation from the teacher)
  report   report.md + results.json + PNG plots
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
    profile_rounds: int = 3
    profile_round_s: float = 0.5         # timed seconds per model per round
    profile_grid: tuple[int, ...] = (3, 2, 2)  # grid points per subspace in hidden, heads, FFN width
    calibrate: int = 12
    measure_rounds: int = 5
    verify_top: int = 4                  # candidates measured end to end per budget at search time
    # search
    latency_ms: tuple[float, ...] = ()             # explicit budgets; empty: budget_fractions x teacher latency
    budget_fractions: tuple[float, ...] = (0.15, 0.3, 0.5)
    heldout_blocks: int = 8
    search_method: str = "auto"
    onnx: bool = False
    # fine-tuning
    finetune_epochs: float = 1.0
    finetune_max_steps: Optional[int] = None
    finetune_lr: float = 1e-4            # teacher; the paper's GLUE lr is 2e-5, too low for 100 CPU steps
    student_lr: float = 1e-4             # students
    finetune_batch: int = 32
    finetune_seq_len: int = 64
    max_train_examples: Optional[int] = 3200  # CPU default: 100 steps of 32 (full train split: None)
    max_eval_examples: Optional[int] = None  # the whole dev split
    kd_alpha: float = 0.0
    stop_after: Optional[str] = None     # stop after this stage (for staged runs)

    def __post_init__(self):
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ValueError(f"stop_after={self.stop_after!r} is not a stage: {list(STAGES)}")
        if any(f <= 0 or f > 1.5 for f in self.budget_fractions):
            raise ValueError(f"budget_fractions {self.budget_fractions} must be in (0, 1.5]")
        if len(self.profile_grid) != 3 or min(self.profile_grid) < 1:
            raise ValueError(f"profile_grid {self.profile_grid} must be 3 positive counts (hidden, heads, FFN width)")
        if self.verify_top < 1:
            raise ValueError(f"verify_top={self.verify_top} must be >= 1 (budgets are verified by measurement)")


# Which config fields each stage depends on (a change reruns that stage and all after it).
_DEPS = {
    "train": ("teacher", "corpus", "spaces", "paper_spaces", "seed", "train_steps", "train_batch", "seq_len",
              "train_lr", "init", "n_random", "max_train_blocks", "eval_blocks", "deepspeed", "backend"),
    "profile": ("runtime", "device", "batch", "threads", "profile_rounds", "profile_round_s", "profile_grid",
                "calibrate", "seq_len"),
    "search": ("latency_ms", "budget_fractions", "heldout_blocks", "search_method", "verify_top"),
    "export": ("onnx",),
    "measure": ("measure_rounds",),
    "finetune": ("task", "finetune_epochs", "finetune_max_steps", "finetune_lr", "student_lr", "finetune_batch",
                 "finetune_seq_len", "max_train_examples", "max_eval_examples", "kd_alpha"),
    "report": (),
}


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
        return hashlib.sha256(json.dumps({k: d[k] for k in keys}, sort_keys=True, default=str).encode()).hexdigest()[:16]

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
                         steps=c.train_steps, lr=c.train_lr, n_random=c.n_random, init=c.init,
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
                                     self._settings(), tuple(c.profile_grid), c.calibrate, log=self.log)
        table = LatencyTable.load(path)
        _, _, info, _ = self._teacher()
        t = measure_in_subprocess(path, {"teacher": info.path}, self.out / "latency" / "teacher.json")
        return {"table": str(path), "teacher_ms": t["models"]["teacher"]["ms"],
                "teacher_noise_sd_ms": t["models"]["teacher"]["noise_sd_ms"],
                "profile_seconds": table.meta["profile_seconds"], "noise": table.meta["noise"],
                "calibration": {k: v for k, v in table.meta.get("calibration", {}).items()
                                if k not in ("students", "measured_ms")}}

    def stage_search(self) -> dict:
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
        if not usable:
            usable = [round(lo * 1.05, 3)]
            self.log(f"[search] no budget reachable (smallest student {lo:.2f} ms); using {usable[0]} ms")
        res = search(pairs, table, SearchSpec(budgets=[Budget(latency_ms=b) for b in usable],
                                              method=c.search_method, seed=c.seed),
                     head_dim, vocab, self.out / "search")
        ver = verify_search(res["candidates"], usable, nets, self.state["profile"]["table"], self.out / "search",
                            top_k=c.verify_top)
        best, unmet = {}, []
        for b in ver["budgets"]:
            self.log(f"[search] latency<={b['budget_ms']:g}ms: {b['message']}")
            if b["met"]:
                ch = b["chosen"]
                best[Budget(latency_ms=b["budget_ms"]).label()] = {
                    k: ch[k] for k in ("space", "layers", "hidden", "ffn_ratio", "heads", "loss", "latency_ms",
                                       "latency_sd_ms", "macs", "params", "measured_ms", "margin_ms")}
                best[Budget(latency_ms=b["budget_ms"]).label()]["budget_ms"] = b["budget_ms"]
                self.log("[search] " + format_choice(f"latency<={b['budget_ms']:g}ms", ch, "loss"))
            else:
                unmet.append({"budget_ms": b["budget_ms"], "message": b["message"]})
        return {"budgets_ms": usable, "skipped_budgets_ms": skipped, "unmet_budgets": unmet, "best": best,
                "predicted_best": res["best"], "objective": notes, "front_size": len(res["front"]),
                "evaluations": res["evaluations"], "verification_noise": ver["measurement"].get("noise"),
                "search_dir": str(self.out / "search")}

    def stage_export(self) -> dict:
        from .export import export_onnx, export_subnet
        from .search.run import candidate_name
        from .space import SubnetConfig
        nets = {s[1][0].name: s[0] for s in self._supernets()}
        _, tok, _, _ = self._teacher()
        students = {}
        for label, r in self.state["search"]["best"].items():
            cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
            name = candidate_name(r)
            if name not in students:
                folder = export_subnet(nets[r["space"]], cfg, self.out / "students" / name, tok,
                                       self.cfg.seq_len, extra={"budget": label, "space": r["space"]})
                if self.cfg.onnx:
                    export_onnx(folder, seq_len=self.cfg.seq_len)
                students[name] = {"folder": str(folder), "subnet": cfg.as_dict(), "space": r["space"],
                                  "budgets": [], "predicted_ms": r["latency_ms"], "heldout_loss": r["loss"],
                                  "verified_ms": r.get("measured_ms")}
            students[name]["budgets"].append(label)
        return {"students": students}

    def stage_measure(self) -> dict:
        """The report's own latency column: a separate measurement in a fresh process."""
        from .latency.run_measure import measure_in_subprocess
        _, _, info, _ = self._teacher()
        folders = {"teacher": info.path}
        for name, s in self.state["export"]["students"].items():
            folders[name] = s["folder"]
        res = measure_in_subprocess(self.state["profile"]["table"], folders, self.out / "latency" / "measure.json",
                                    rounds=self.cfg.measure_rounds)
        out = {k: {"ms": v["ms"], "spread_ms": v["noise_sd_ms"], "low_ms": v["low_ms"],
                   "round_medians_ms": v["round_medians_ms"]} for k, v in res["models"].items()}
        out["_session"] = {"drift": res["drift"], "noise": res["noise"], "threads": res["threads"],
                           "when": res["when"]}
        return out

    def stage_finetune(self) -> dict:
        from .finetune.train import FinetuneConfig, finetune
        c = self.cfg
        _, _, info, _ = self._teacher()
        common = dict(task=c.task, epochs=c.finetune_epochs, max_steps=c.finetune_max_steps,
                      batch_size=c.finetune_batch, max_seq_len=c.finetune_seq_len, seed=c.seed,
                      max_train_examples=c.max_train_examples, max_eval_examples=c.max_eval_examples)
        out = {}
        t_dir = self.out / "finetuned" / "teacher"
        out["teacher"] = _finetune_cached(FinetuneConfig(model=info.path, out_dir=str(t_dir), lr=c.finetune_lr,
                                                         **common), finetune)
        for name, s in self.state["export"]["students"].items():
            kd = dict(teacher=str(t_dir), kd_alpha=c.kd_alpha) if c.kd_alpha > 0 else {}
            out[name] = _finetune_cached(FinetuneConfig(model=s["folder"], out_dir=str(self.out / "finetuned" / name),
                                                        lr=c.student_lr, **kd, **common), finetune)
        return out

    def stage_report(self) -> dict:
        from .report import write_report
        return write_report(self)


def _finetune_cached(fc, fn) -> dict:
    """Each fine-tuning run is itself a resumable unit: a finished one (same config) is reused."""
    res_path = Path(fc.out_dir) / "finetune_results.json"
    if res_path.is_file():
        r = json.loads(res_path.read_text())
        if r.get("config") == json.loads(json.dumps(asdict(fc))):
            return {k: v for k, v in r.items() if k != "log"}
    r = fn(fc)
    return {k: v for k, v in r.items() if k != "log"}


def run_pipeline(cfg: RunConfig, log=print) -> dict:
    return Run(cfg, log).run()
