"""The sandwich step as CUDA graphs (autodistil.distill.graphs, TrainConfig.cuda_graphs).

CPU part: the graph-ready path (SandwichGraphs(capture=False): each capture replaced by keeping the
body, each replay by running it eagerly, with the same static buffers) against the eager step:
the same losses over 20 steps (fp32 and CPU bf16 autocast, several losses, padding); no host
synchronisation inside a member (Tensor.item / __bool__ / __float__ / __int__ / tolist raise while
one runs); the addresses of gradients, weight shadows and static buffers stay the same over steps
and a moved gradient is refused; with several Triton autotune configs under the interpreter the
warm-up tunes every key before capture (a replay that tunes is an error); what cannot be graphed is
refused with one line; the CLI has the flag.
GPU part (@pytest.mark.gpu): real captures against the eager step over 20 steps for every backend,
fp32 to 1e-6 and bf16 autocast to bf16 noise."""

import contextlib
import math

import pytest
import torch

from autodistil import ops
from autodistil.data.text import TokenBlocks
from autodistil.distill.graphs import SandwichGraphs, _Standin, check_graphable
from autodistil.distill.losses import LossWeights
from autodistil.distill.train import SupernetTrainer, TrainConfig
from autodistil.nn import TeacherNet
from autodistil.ops import shared
from autodistil.space import Range, SearchSpace

# 16 subnets (head dim 16, the tiny teacher's): random members repeat within 20 steps, so the
# graph-ready path captures and replays random members too, not only the fixed ones
SPACE = SearchSpace("unit", Range(1, 2, 1), Range(32, 64, 32), Range(2.0, 3.0, 1.0), Range(2, 4, 2), 16)
TINY = SearchSpace("t", Range(1, 1, 1), Range(32, 32, 32), Range(2.0, 2.0, 1.0), Range(2, 2, 2), 16)


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory):
    """A tiny random BERT folder (2 layers, hidden 64, 4 heads of 16, vocab 6000), no tokenizer: the
    trainer gets token ids directly, and the GPU machine needs no teacher package."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=6000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
    )
    d = tmp_path_factory.mktemp("tiny_bert")
    BertModel(cfg).save_pretrained(d)
    return d


def _trainer(teacher_dir, tmp_path, name, space=SPACE, device="cpu", batch=4, seq=16, graphs=None, **kw):
    from autodistil.teacher import load_teacher

    hf, _, info = load_teacher(str(teacher_dir), with_tokenizer=False)
    base = dict(
        teacher=str(teacher_dir),
        out_dir=str(tmp_path / name),
        spaces=("tiny",),
        steps=1000,
        batch_size=batch,
        seq_len=seq,
        init="random",
        lr=3e-3,
        warmup_steps=1,
        n_random=2,
        device=device,
        eval_every=10**6,
        ckpt_every=10**6,
    )
    base.update(kw)
    cfg = TrainConfig(**base)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (3 * batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - seq // 4 :] = 0  # padded keys in one sequence per epoch
    data = TokenBlocks(ids, mask)
    tr = SupernetTrainer(
        cfg, space, TeacherNet(hf, info.shape), {"sha256": info.sha256}, data, data, tmp_path / name
    )
    if graphs is not None:
        tr.enable_graphs(capture=graphs)
    return tr


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    """Tensor.item, __bool__, __float__, __int__ and tolist raise within the block: what would make the
    host wait for the GPU (and fail a CUDA graph capture)."""
    saved = {k: getattr(torch.Tensor, k) for k in ("item", "__bool__", "__float__", "__int__", "tolist")}

    def make(k):
        def f(self, *a, **kw):
            raise HostSync(f"Tensor.{k} inside a graphed member")

        return f

    try:
        for k in saved:
            setattr(torch.Tensor, k, make(k))
        yield
    finally:
        for k, v in saved.items():
            setattr(torch.Tensor, k, v)


# --------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize(
    "precision,loss",
    [("fp32", LossWeights(relation=1.0, attention=1.0, hidden=1.0)), ("bf16", LossWeights(relation=1.0))],
)
def test_graph_ready_path_gives_the_eager_losses(tiny_teacher_dir, tmp_path, precision, loss):
    """20 steps, eager trainer against the graph-ready one from the same seed: the same member losses
    and gradient norms each step (same code on the same values: exact up to 1e-6 relative), and the
    graph-ready run did replay fixed and random members."""
    eager = _trainer(tiny_teacher_dir, tmp_path, "eager", precision=precision, loss=loss)
    graph = _trainer(tiny_teacher_dir, tmp_path, "graph", precision=precision, loss=loss, graphs=False)
    replayed = captured = 0
    for step in range(20):
        a, b = eager.train_step(), graph.train_step()
        assert a["subnets"] == b["subnets"]
        for k, v in a["members"].items():
            assert abs(b["members"][k] - v) <= 1e-6 * max(1.0, abs(v)), (step, k, v, b["members"][k])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6, abs=1e-9), step
        replayed += b["graphs"]["replayed"]
        captured += b["graphs"]["captured"]
    st = graph.graphs.stats()
    assert st["random_graphs"] >= 1 and st["member_graphs"] >= 3 and replayed >= 2 * 18 and captured >= 3, st


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_synchronisation_inside_a_member(tiny_teacher_dir, tmp_path, monkeypatch, precision):
    """After one warm-up step (the bf16 path probes a kernel once, which reads a result), the teacher's
    and every member's body (eager first sightings, captures and replays) runs with host reads
    raising; the losses are read once per step, outside the members."""
    tr = _trainer(
        tiny_teacher_dir,
        tmp_path,
        "sync",
        precision=precision,
        graphs=False,
        loss=LossWeights(relation=1.0, attention=1.0, hidden=1.0),
    )
    tr.train_step()
    runs = []

    def guard(real):
        def body(self, *a):
            runs.append(real.__name__)
            with no_host_sync():
                return real(self, *a)

        return body

    monkeypatch.setattr(SandwichGraphs, "_member_body", guard(SandwichGraphs._member_body))
    monkeypatch.setattr(SandwichGraphs, "_teacher_body", guard(SandwichGraphs._teacher_body))
    for _ in range(4):
        rec = tr.train_step()
        assert all(math.isfinite(v) for v in rec["members"].values())
    assert runs.count("_member_body") == 16 and runs.count("_teacher_body") >= 4, runs
    with pytest.raises(HostSync):  # the guard itself works
        with no_host_sync():
            float(torch.ones(()))


def test_addresses_of_grads_shadows_and_buffers_stay_the_same(tiny_teacher_dir, tmp_path):
    """CPU bf16 autocast (so weight shadows exist): from the step after the first captures on, every
    gradient, every shadow (the same tensor objects, refreshed in place to the new weights) and the
    static input buffers keep their addresses; gradients and shadows that appear after the first
    capture (the teacher's, before any member ran) are not moves; a gradient replaced by a new
    tensor is refused."""
    tr = _trainer(tiny_teacher_dir, tmp_path, "ptr", precision="bf16", graphs=False, n_random=0)
    g = tr.graphs
    for _ in range(2):
        tr.train_step()
    assert g.members, "the fixed members should be captured by now"
    named = [(n, p) for n, p in tr.model.named_parameters() if p.grad is not None]
    grads = {n: (p.grad, p.grad.data_ptr()) for n, p in named}
    shadows = [(s, s.data_ptr()) for s in shared.lowp_shadows(tr.model.parameters())]
    bufs = (g.ids.data_ptr(), g.mask.data_ptr())
    assert len(shadows) >= 10 and len(grads) >= 10
    for _ in range(4):
        tr.train_step()
        assert all(p.grad is grads[n][0] and p.grad.data_ptr() == grads[n][1] for n, p in named)
        now = shared.lowp_shadows(tr.model.parameters())
        assert len(now) == len(shadows)
        assert all(s is t and s.data_ptr() == ptr for (t, ptr), s in zip(shadows, now))
        assert (g.ids.data_ptr(), g.mask.data_ptr()) == bufs
    p = next(p for _, p in named if p.dim() == 2)
    shadow = shared.lowp_shadow(p, torch.bfloat16)
    assert torch.equal(shadow, p.detach().to(torch.bfloat16)), "the shadow must hold the current weights"
    p.grad = torch.zeros_like(p)  # what zero_grad(set_to_none=True) and a re-creation amount to
    with pytest.raises(RuntimeError, match="gradient of .* moved since capture"):
        tr.train_step()


@pytest.mark.skipif(ops.backend_status()["triton"] != "ok", reason="triton backend unavailable")
def test_warm_up_tunes_every_triton_key_before_capture(tiny_teacher_dir, tmp_path):
    """Triton backend under the interpreter with two autotune configs (a stand-in timer): the first
    sighting of each member tunes its forward, dX and dW keys; the captured bodies then replay without
    tuning anything (a replay that tunes raises), and a body that does tune is refused."""
    import importlib
    import triton

    sl = importlib.import_module("autodistil.kernels.sliced_linear")
    cfgs = [
        triton.Config({"BM": 16, "BN": 16, "BK": 16, "GROUP_M": 1}, num_warps=1, num_stages=1),
        triton.Config({"BM": 16, "BN": 32, "BK": 16, "GROUP_M": 1}, num_warps=1, num_stages=1),
    ]
    timed = []
    old = sl.configure_autotune(cfgs, lambda fn: (fn(), timed.append(1), float(len(timed) % 2))[2])
    try:
        tr = _trainer(
            tiny_teacher_dir,
            tmp_path,
            "tri",
            space=TINY,
            batch=2,
            seq=8,
            n_random=0,
            backend="triton",
            graphs=False,
        )
        tr.train_step()  # warm-up: both members eager
        keys = sl.tuned_keys()
        assert timed and len(keys) >= 3, "forward, dX and dW keys should be tuned by the warm-up"
        for _ in range(2):
            rec = tr.train_step()  # capture, then replays (stand-ins: run and check)
        assert rec["graphs"]["replayed"] == 2 and sl.tuned_keys() == keys
        x = torch.randn(3, 24, requires_grad=True)
        w = torch.randn(40, 24, requires_grad=True)
        new = _Standin(
            lambda: ops.sliced_linear(x, w, None, 40, 24, backend="triton").sum().backward(), "probe"
        )
        with pytest.raises(RuntimeError, match="tuned Triton shapes its warm-up had not"):
            new.replay()
    finally:
        sl.configure_autotune(*old)


def test_what_cannot_be_graphed_is_refused_in_one_line(tiny_teacher_dir, tmp_path):
    allowed = "allowed: one CUDA device, a single process, no DeepSpeed, dropout=0.0"
    with pytest.raises(
        ValueError,
        match=r"cuda_graphs=True cannot run here "
        r"\(device cpu is not a CUDA device\); " + allowed,
    ):
        _trainer(tiny_teacher_dir, tmp_path, "cpu", cuda_graphs=True)
    cfg = TrainConfig(cuda_graphs=True, deepspeed="ds.json", dropout=0.1)
    with pytest.raises(ValueError) as e:
        check_graphable(cfg, torch.device("cuda", 0), world=2)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(allowed)
    for part in ("DeepSpeed", "2 ranks", "dropout=0.1"):
        assert part in msg, msg
    check_graphable(TrainConfig(), torch.device("cuda", 0), world=1)  # nothing to refuse
    check_graphable(TrainConfig(), torch.device("cpu"), 1, capture=False)  # the graph-ready path: anywhere


def test_cli_has_the_flag():
    from autodistil.cli import build_parser

    a = build_parser().parse_args(["train", "--cuda-graphs"])
    assert a.cuda_graphs is True
    assert TrainConfig().cuda_graphs is False


# --------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_graphed_steps_match_eager(tiny_teacher_dir, tmp_path, backend, precision):
    """Real CUDA graphs against the eager step over 20 steps: fp32 to 1e-6, bf16 autocast to bf16 noise;
    the graphed run replays (fixed and random members) and holds a bounded pool."""
    if ops.backend_status()[backend] != "ok":
        pytest.skip(ops.backend_status()[backend])
    kw = dict(device="cuda", precision=precision, backend=backend, batch=8, seq=32)
    eager = _trainer(tiny_teacher_dir, tmp_path, "eager", **kw)
    graph = _trainer(tiny_teacher_dir, tmp_path, "graph", cuda_graphs=True, **kw)
    assert graph.graphs is not None and graph.graphs.capture
    tol = 1e-6 if precision == "fp32" else 2e-2
    replayed = 0
    for step in range(20):
        a, b = eager.train_step(), graph.train_step()
        for k, v in a["members"].items():
            assert abs(b["members"][k] - v) <= tol * max(1.0, abs(v)), (step, k, v, b["members"][k])
        replayed += b["graphs"]["replayed"]
    st = graph.graphs.stats()
    assert replayed >= 2 * 18 and st["random_graphs"] >= 1 and st["pool_mb"] > 0, st
