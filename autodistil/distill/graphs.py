"""The sandwich step as CUDA graphs (``TrainConfig.cuda_graphs``): the host launches a handful of graph
replays per step instead of thousands of kernels, Python and autograd calls.

Per step, on one side stream (``stepping``), in ``SandwichGraphs.run``:
  1. the batch is copied into static input buffers (ids, mask: allocated once);
  2. every cached low-precision weight shadow of the student is refreshed in place
     (``ops.shared.refresh_lowp_shadows``: the optimizer step outside the graphs changed the weights);
  3. the teacher's forward replays (captured once; only the outputs the loss reads are kept);
  4. each member replays its captured forward + loss + backward: the backward accumulates into the
     parameters' gradients (allocated by the first eager run, zeroed in place by the trainer, never
     set to None), and the member's loss lands in a static scalar, copied out after the replay;
  5. the trainer reads the losses once after all members, then clips and steps the optimizer
     outside the graphs.

Capture policy. The first time a member's subnet is seen it runs eagerly (the same code and the same
static buffers as the graph): that run is its warm-up (Triton compiles and tunes every key it needs,
gradients and shadows are created, the cuBLAS workspace of the side stream exists) and also its real
contribution to this step. The second time it is captured, then replayed. The largest and smallest
members (fixed shapes, every step) are always captured; random members go through a cache keyed by
subnet, bounded by a count (``max_random``) and by the memory pool's growth (``pool_slack`` x the
pool once the teacher and the fixed members are in it): a subnet beyond the bound runs eagerly. All
graphs share one memory pool; graphs replay one after another on one stream, what crosses graphs
(the teacher's outputs) stays alive, and member losses are copied out at once, so sharing is safe.

Checks. Around each capture, no Triton key may be tuned and no shadow refreshed (either would be
baked into that one graph); every step, the parameters, gradients and shadows the graphs hold must
be where they were at capture (a gradient set to None, ``.to()``, ``load_state_dict(assign=True)``
would leave the graphs writing to freed memory): a move is an error naming the tensor.

``capture=False`` is the graph-ready path on any device: each capture is replaced by keeping the
body, each replay by running it eagerly, with the same checks around every run (how the CPU tests
it). What cannot be graphed is refused by ``check_graphable``.
"""

from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import torch

from ..ops import shared as ops_shared


def check_graphable(cfg, device: torch.device, world: int, capture: bool = True) -> None:
    """Raise a one-line ValueError when a run cannot be graphed, naming why and what is allowed."""
    why = []
    if capture and device.type != "cuda":
        why.append(f"device {device.type} is not a CUDA device")
    if cfg.deepspeed:
        why.append("DeepSpeed steps and reduces gradients outside any graph")
    if world > 1:
        why.append(f"{world} ranks: DDP all-reduces gradients from autograd hooks outside the graphs")
    if cfg.dropout > 0:
        why.append(f"dropout={cfg.dropout}: random masks make graphed and eager steps incomparable")
    if why:
        raise ValueError(
            f"cuda_graphs=True cannot run here ({'; '.join(why)}); allowed: one CUDA device, "
            f"a single process, no DeepSpeed, dropout=0.0"
        )


def _tuned_keys() -> frozenset:
    """The Triton tuner's keys when the Triton kernels are loaded (else none)."""
    mod = sys.modules.get("autodistil.kernels.sliced_linear")
    return mod.tuned_keys() if mod is not None else frozenset()


@contextlib.contextmanager
def _nothing_new(what: str):
    """Fail when the block tuned a Triton key or refreshed a shadow: inside a capture either would be
    recorded into that one graph (a tuning run cannot even be captured: it synchronises)."""
    keys, refreshes = _tuned_keys(), ops_shared.shadow_refreshes()
    yield
    new = _tuned_keys() - keys
    if new:
        raise RuntimeError(
            f"cuda_graphs: {what} tuned Triton shapes its warm-up had not, e.g. {sorted(new, key=str)[0]}"
        )
    if ops_shared.shadow_refreshes() != refreshes:
        raise RuntimeError(
            f"cuda_graphs: {what} refreshed a weight shadow: shadows must be refreshed "
            f"before the graphs (refresh_lowp_shadows), never inside one"
        )


class _Standin:
    """What capture=False keeps instead of a CUDA graph: the body, run eagerly at each replay."""

    def __init__(self, body, what: str):
        self.body, self.what, self.out = body, what, None

    def replay(self) -> None:
        with _nothing_new(self.what):
            self.out = self.body()


class _Graph:
    """A captured CUDA graph and the output its body returned (static: replays rewrite it)."""

    def __init__(self, graph, out):
        self.graph, self.out = graph, out

    def replay(self) -> None:
        self.graph.replay()


class SandwichGraphs:
    """Runs a SupernetTrainer's sandwich through CUDA graphs (see the module docstring).
    capture=False: the graph-ready path with eager stand-ins. max_random: most random-member graphs
    kept; pool_slack: the pool may grow by this fraction past its size once the teacher and the fixed
    members are captured."""

    def __init__(self, trainer, capture: bool = True, max_random: int = 64, pool_slack: float = 0.5):
        if max_random < 0 or pool_slack < 0:
            raise ValueError(
                f"SandwichGraphs: max_random={max_random} and pool_slack={pool_slack} must be >= 0"
            )
        self.tr = trainer
        self.capture = capture
        self.max_random, self.pool_slack = max_random, pool_slack
        self.device = trainer.device
        self.stream = torch.cuda.Stream(self.device) if capture else None
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.fixed = {trainer.space.largest(), trainer.space.smallest()}
        self.named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.ids = self.mask = None  # static inputs, allocated at the first step
        self.teacher = None  # graph of the teacher's forward
        self.members: dict = {}  # subnet -> graph of its forward + loss + backward
        self.seen: set = set()  # subnets run once (warmed up)
        self.pool_bytes = 0  # growth of reserved memory over all captures
        self.pool_limit = None
        self.addresses = None
        self.last = {"replayed": 0, "captured": 0, "eager": 0}

    # --- per step ------------------------------------------------------------------------
    @contextlib.contextmanager
    def stepping(self):
        """The whole step on the graphs' side stream (captures and replays use it), ordered after what
        the current stream did before and before what it does after."""
        if self.stream is None:
            yield
            return
        cur = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(cur)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            cur.wait_stream(self.stream)

    def run(self, ids: torch.Tensor, mask: torch.Tensor, members) -> list:
        """The sandwich's member losses (detached fp32 device scalars, not read here) after every
        member's gradients were accumulated. ids, mask: the batch (any device), (B, T) each."""
        self.last = {"replayed": 0, "captured": 0, "eager": 0}
        if self.ids is None:
            self.ids = torch.empty(ids.shape, dtype=ids.dtype, device=self.device)
            self.mask = torch.empty(mask.shape, dtype=mask.dtype, device=self.device)
        elif ids.shape != self.ids.shape or mask.shape != self.mask.shape:
            raise ValueError(
                f"cuda_graphs: the batch is {tuple(ids.shape)}, the static buffers "
                f"{tuple(self.ids.shape)}: every step needs the same batch shape"
            )
        self._check_addresses()
        self.ids.copy_(ids, non_blocking=True)
        self.mask.copy_(mask, non_blocking=True)
        ops_shared.refresh_lowp_shadows(self.params)
        self._teacher()
        return [self._member(sub) for _, sub in members]

    @property
    def t_out(self):
        return self.teacher.out

    def _teacher(self) -> None:
        if self.teacher is None:
            self._teacher_body()  # warm-up (eager): the teacher's shadows, cuBLAS on this stream
            self.teacher = self._capture(lambda: self._teacher_body(), "the teacher's forward")
        self.teacher.replay()

    def _member(self, sub) -> torch.Tensor:
        g = self.members.get(sub)
        if g is None and self._may_capture(sub):
            g = self.members[sub] = self._capture(lambda: self._member_body(sub), f"member {sub.short()}")
            self.last["captured"] += 1
            if self.pool_limit is None and all(s in self.members for s in self.fixed):
                self.pool_limit = (1 + self.pool_slack) * self.pool_bytes
        if g is None:  # first sighting (its warm-up) or beyond the cache's bound
            self.seen.add(sub)
            self.last["eager"] += 1
            return self._member_body(sub)
        g.replay()
        self.last["replayed"] += 1
        return g.out.clone()  # the static scalar is rewritten by the next replay of this graph

    def _may_capture(self, sub) -> bool:
        if sub not in self.seen:
            return False
        if sub in self.fixed:
            return True
        n_random = sum(1 for s in self.members if s not in self.fixed)
        return n_random < self.max_random and (self.pool_limit is None or self.pool_bytes <= self.pool_limit)

    # --- the captured bodies: static buffers in, static outputs out, no host synchronisation ----
    def _teacher_body(self):
        """The teacher's forward on the static inputs; only what the loss reads is kept."""
        tr, L = self.tr, self.tr.cfg.loss
        out = tr._teacher_out(self.ids, self.mask, cache=False)
        pick = lambda xs, i: (
            None
            if xs is None
            else tuple(
                x if j == i % len(xs) else None  # noqa: E731
                for j, x in enumerate(xs)
            )
        )
        return SimpleNamespace(
            qkv=pick(out.qkv, L.teacher_layer),
            attentions=pick(out.attentions, L.teacher_layer),
            hidden_states=out.hidden_states,
        )

    def _member_body(self, sub) -> torch.Tensor:
        """One member's forward, loss and backward (loss / members, accumulated into the gradients)."""
        tr = self.tr
        loss, _ = tr._member_loss(self.ids, self.mask, self.t_out, sub, cache=False)
        (loss / tr.members).backward()
        return loss.detach().float()

    # --- capture ----------------------------------------------------------------------------
    def _capture(self, body, what: str):
        if not self.capture:
            self.addresses = self._addresses()
            return _Standin(body, what)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # what torch.cuda.graph frees on entry, so the growth below is the pool's
        before = torch.cuda.memory_reserved(self.device)
        g = torch.cuda.CUDAGraph()
        try:
            with _nothing_new(what), torch.cuda.graph(g, pool=self.pool, stream=self.stream):
                out = body()
        except Exception as e:
            raise RuntimeError(
                f"cuda_graphs: capturing {what} failed ({type(e).__name__}: {e}); "
                f"train with cuda_graphs=False to run it eagerly"
            ) from e
        self.pool_bytes += max(0, torch.cuda.memory_reserved(self.device) - before)
        self.addresses = self._addresses()
        return _Graph(g, out)

    # --- addresses the graphs hold ------------------------------------------------------------
    def _addresses(self) -> tuple:
        """Per parameter (its storage, its gradient's or 0, its shadows'), then the static buffers."""
        return (
            tuple(
                (
                    p.data_ptr(),
                    0 if p.grad is None else p.grad.data_ptr(),
                    tuple(s.data_ptr() for s in ops_shared.lowp_shadows([p])),
                )
                for p in self.params
            ),
            self.ids.data_ptr(),
            self.mask.data_ptr(),
        )

    def _check_addresses(self) -> None:
        """Everything the graphs hold is where it was at the last capture. A gradient or shadow that
        appeared since (none at capture: no graph holds it) is not a move."""
        if self.addresses is None:
            return
        now = self._addresses()
        if now == self.addresses:
            return
        moved = []
        for (n, _), (p0, g0, s0), (p1, g1, s1) in zip(self.named, self.addresses[0], now[0]):
            if p0 != p1:
                moved.append(f"parameter {n}")
            elif g0 and g0 != g1:
                moved.append(f"gradient of {n}")
            elif s0 and s0 != s1[: len(s0)]:
                moved.append(f"the low-precision shadow of {n}")
        if self.addresses[1:] != now[1:]:
            moved.append("the static input buffers")
        if moved:
            raise RuntimeError(
                f"cuda_graphs: {moved[0]} moved since capture ({len(moved)} tensors moved): "
                f"the graphs would write to freed memory; keep gradients allocated "
                f"(zero_grad(set_to_none=False)) and parameters in place"
            )
        self.addresses = now

    def stats(self) -> dict:
        """Graphs held and the pool's size, for logs and benchmarks."""
        n_random = sum(1 for s in self.members if s not in self.fixed)
        return {
            "member_graphs": len(self.members),
            "random_graphs": n_random,
            "pool_mb": round(self.pool_bytes / 2**20, 1),
            **self.last,
        }
