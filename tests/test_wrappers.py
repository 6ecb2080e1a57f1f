"""Gradient delivery under wrappers. A sliced op writes dW into p.grad in place for a leaf,
non-DTensor parameter without a ZeRO-3 ds_id, and returns it through autograd otherwise; the
wrappers' reduction hooks run on autograd's AccumulateGrad node, which autograd still runs after
an in-place write (with no incoming gradient), so they read the complete p.grad."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodistil import ops
from autodistil.ops.shared import delivers_inplace, grad_mode_ctx

sys.path.insert(0, str(Path(__file__).parent))
from wrapper_worker import single_process_grads  # noqa: E402


def test_non_leaf_weight_gets_its_gradient_through_autograd():
    """A weight computed from a leaf (a parametrization, or a view of a flat parameter as FSDP1
    and ZeRO-3 build) has no .grad an optimizer reads: in-place delivery would lose it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 8)
    torch.nn.utils.parametrize.register_parametrization(lin, "weight", _Scale())
    x = torch.randn(5, 4)
    with torch.nn.utils.parametrize.cached():
        w = lin.weight
        assert not w.is_leaf and not delivers_inplace(w)
        ops.sliced_linear(x, w, lin.bias, 7, 4, "gelu").pow(2).sum().backward()
    got = lin.parametrizations.weight.original.grad
    ref_w = lin.parametrizations.weight.original.detach().clone().requires_grad_()
    torch.nn.functional.gelu(torch.nn.functional.linear(x, (2 * ref_w)[:7, :4], lin.bias.detach()[:7])).pow(
        2
    ).sum().backward()
    assert got is not None, "the leaf behind a computed weight got no gradient"
    torch.testing.assert_close(got, ref_w.grad)


class _Scale(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_grad_mode_is_a_context_and_decided_per_parameter():
    W = torch.randn(8, 6, requires_grad=True)
    assert delivers_inplace(W)
    with grad_mode_ctx("autograd"):
        assert not delivers_inplace(W)
    assert delivers_inplace(W)  # restored
    W.ds_id = 3  # a ZeRO-3 parameter
    assert not delivers_inplace(W)
    with pytest.raises(ValueError, match="grad mode 'fast' is not allowed"):
        with grad_mode_ctx("fast"):
            pass


def _launch(wrappers: str, out: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29300 + abs(hash(str(out))) % 300),
        str(Path(__file__).parent / "wrapper_worker.py"),
        wrappers,
        str(out),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def _assert_match(got: dict, ref: dict, wrapper: str):
    assert set(got) == set(ref), wrapper
    for n, g in ref.items():
        torch.testing.assert_close(got[n].reshape(g.shape), g, rtol=1e-4, atol=1e-6, msg=f"{wrapper} {n}")


@pytest.mark.multirank
def test_user_wrapped_ddp_and_fsdp2_gradients_equal_single_process(tmp_path):
    """DDP (sandwich with no_sync) and FSDP2 (fully_shard per layer + root) on 2 gloo ranks:
    reduced, gathered gradients equal one process on the whole batch."""
    ref = single_process_grads()
    res = _launch("ddp,fsdp2", tmp_path / "g.pt")
    for w in ("ddp", "fsdp2"):
        _assert_match(res[w], ref, w)


@pytest.mark.multirank
def test_user_applied_zero_gradients_equal_single_process(tmp_path):
    """DeepSpeed ZeRO-1 and ZeRO-2 (hooks on AccumulateGrad read p.grad: in-place delivery works,
    no forced autograd mode needed) and ZeRO-3 (ds_id parameters: delivered through autograd)."""
    pytest.importorskip("deepspeed")
    ref = single_process_grads()
    res = _launch("zero1,zero2,zero3", tmp_path / "g.pt")
    for w in ("zero1", "zero2", "zero3"):
        _assert_match(res[w], ref, w)
