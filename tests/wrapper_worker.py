"""One rank of tests/test_wrappers.py (started by torch.distributed.run with gloo on CPU):
a tiny SuperBert under a user-applied wrapper, two sandwich members accumulated, then the
full (reduced, gathered) gradient of every parameter saved by rank 0.

    python -m torch.distributed.run --nproc_per_node 2 tests/wrapper_worker.py WRAPPERS OUT.pt
WRAPPERS: comma-separated ddp | fsdp2 | zero1 | zero2 | zero3 (ZeRO optionally "-autograd": run under
grad_mode_ctx("autograd")); OUT.pt: {wrapper: {name: full gradient}}
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist

from autodistil.nn import SuperBert, SuperBertConfig
from autodistil.ops.shared import grad_mode_ctx
from autodistil.space import Range, SearchSpace, SubnetConfig

SPACE = SearchSpace("unit", Range(1, 2, 1), Range(32, 48, 16), Range(2.0, 3.0, 0.5), Range(2, 3, 1), 16)
MEMBERS = [SubnetConfig(2, 48, 3.0, 3), SubnetConfig(1, 32, 2.0, 2)]
B, T, VOCAB = 4, 6, 97


def make_model() -> SuperBert:
    torch.manual_seed(0)
    m = SuperBert(SuperBertConfig.for_spaces(SPACE, vocab_size=VOCAB, max_position=16))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(
                (1 + 0.1 * torch.randn(p.shape, generator=g))
                if "LayerNorm.weight" in n
                else 0.05 * torch.randn(p.shape, generator=g)
            )
    return m


def batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


def member_loss(net, ids, mask, cfg):
    out = net(ids, mask, subnet=cfg, output_qkv=True)
    return (out.last_hidden_state * mask[..., None]).pow(2).mean() + out.qkv[-1][0].pow(2).mean()


def single_process_grads() -> dict:
    """Reference: the whole batch in one process, members summed as the workers do."""
    m = make_model()
    ids, mask = batch()
    for cfg in MEMBERS:
        member_loss(m, ids, mask, cfg).backward()
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in m.named_parameters()
    }


def wrapped_grads(wrapper: str, rank: int, world: int) -> dict:
    ids, mask = batch()
    per = B // world
    ids, mask = ids[rank * per : (rank + 1) * per], mask[rank * per : (rank + 1) * per]
    model = make_model()
    if wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, find_unused_parameters=True)
        for k, cfg in enumerate(MEMBERS):  # as the trainer: no_sync for all but the last member
            with contextlib.nullcontext() if k == len(MEMBERS) - 1 else net.no_sync():
                member_loss(net, ids, mask, cfg).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    if wrapper == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        for cfg in MEMBERS:
            member_loss(model, ids, mask, cfg).backward()
        return {
            n: (p.grad.full_tensor() if p.grad is not None else torch.zeros(p.shape))
            for n, p in model.named_parameters()
        }
    # DeepSpeed ZeRO-<stage>, applied by the user ("-autograd": under grad_mode_ctx("autograd"))
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    ctx = grad_mode_ctx("autograd") if wrapper.endswith("-autograd") else contextlib.nullcontext()
    cfg = {
        "train_micro_batch_size_per_gpu": per,
        "gradient_accumulation_steps": len(MEMBERS),
        "zero_optimization": {"stage": int(wrapper[4])},
        "optimizer": {"type": "AdamW", "params": {"torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    with ctx:  # as the trainer: one backward per member, reduced at the accumulation boundary
        for k, c in enumerate(MEMBERS):
            engine.set_gradient_accumulation_boundary(k == len(MEMBERS) - 1)
            engine.backward(member_loss(engine, ids, mask, c))  # scaled by 1 / accumulation steps
    full = {}
    for n, p in engine.module.named_parameters():
        g = safe_get_full_grad(p)
        full[n] = (
            torch.zeros(tuple(getattr(p, "ds_shape", p.shape)))
            if g is None
            else g.detach().clone() * len(MEMBERS)
        )
    return full


def main(wrappers: str, out: str) -> None:
    """Every wrapper averages over ranks; equal local batches make that the whole batch's mean."""
    import os

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if "zero" in wrappers:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    res = {w: wrapped_grads(w, rank, world) for w in wrappers.split(",")}
    if rank == 0:
        torch.save(res, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
