import math

import pytest
import torch
import torch.nn.functional as F

from autodistil.distill.losses import (
    LossWeights,
    attention_map_loss,
    hidden_state_loss,
    logits_loss,
    qkv_relation_loss,
    relation_loss,
    uniform_layer_map,
)


def _ref_relation(t, s, mask, r):
    """Loop-per-(batch, head, row) reference of the MiniLMv2 relation KL."""
    B, T, _ = t.shape
    total, rows = 0.0, 0
    for b in range(B):
        valid = [i for i in range(T) if mask[b, i]]
        for x_t, x_s in zip(t[b].chunk(r, -1), s[b].chunk(r, -1)):
            for i in valid:
                lt = torch.stack([x_t[i] @ x_t[j] / math.sqrt(x_t.shape[-1]) for j in valid])
                ls = torch.stack([x_s[i] @ x_s[j] / math.sqrt(x_s.shape[-1]) for j in valid])
                pt = torch.softmax(lt.double(), 0)
                total += float((pt * (pt.log() - torch.log_softmax(ls.double(), 0))).sum())
                rows += 1
    return total / rows


def test_relation_loss_matches_reference_and_is_zero_on_identity():
    torch.manual_seed(0)
    t, s = torch.randn(2, 5, 32), torch.randn(2, 5, 48)  # different widths: relations are T x T
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = relation_loss(t, s, mask, n_heads=4)
    assert float(got) == pytest.approx(_ref_relation(t, s, mask, 4), rel=1e-5)
    assert float(relation_loss(t, t, mask, 4)) == pytest.approx(0.0, abs=1e-7)
    assert float(qkv_relation_loss([t] * 3, [t] * 3, mask, 4)) == pytest.approx(0.0, abs=1e-7)
    assert float(got) > 0


def test_relation_heads_must_divide_width():
    with pytest.raises(ValueError, match="relation heads r=12 must divide the Q/K/V width 224"):
        relation_loss(torch.randn(1, 3, 384), torch.randn(1, 3, 224), None, 12)
    relation_loss(torch.randn(1, 3, 384), torch.randn(1, 3, 224), None, 16)  # 16 divides 32*A


def test_attention_map_loss_head_matched_and_averaged():
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0]])
    mk = lambda a: torch.softmax(torch.randn(1, a, 4, 4).masked_fill(mask[:, None, None, :] == 0, -1e9), -1)
    t, s = mk(3), mk(3)
    ref = F.kl_div(s[..., :3, :3].log(), t[..., :3, :3], reduction="sum") / (3 * 3)
    assert float(attention_map_loss(t, s, mask)) == pytest.approx(float(ref), rel=1e-5)
    assert float(attention_map_loss(t, t, mask)) == pytest.approx(0.0, abs=1e-7)
    s2 = mk(5)  # different head counts: head-averaged
    tm, sm = t.mean(1, keepdim=True), s2.mean(1, keepdim=True)
    ref2 = F.kl_div(sm[..., :3, :3].log(), tm[..., :3, :3], reduction="sum") / 3
    assert float(attention_map_loss(t, s2, mask)) == pytest.approx(float(ref2), rel=1e-5)


def test_hidden_state_loss_with_projection_and_mapping():
    torch.manual_seed(2)
    t_hs = [torch.randn(2, 4, 8) for _ in range(5)]  # 4 teacher layers + embeddings
    proj = torch.nn.Linear(6, 8)
    s_hs = [torch.randn(2, 4, 6) for _ in range(3)]  # 2 student layers
    lm = uniform_layer_map(4, 2)
    assert lm == [(2, 1), (4, 2)]
    got = hidden_state_loss(t_hs, s_hs, lm, proj)
    ref = sum(F.mse_loss(proj(s_hs[j]), t_hs[i]) for i, j in lm) / 2
    assert float(got) == pytest.approx(float(ref), rel=1e-6)
    assert float(hidden_state_loss(t_hs, t_hs, [(1, 1), (3, 3)])) == 0.0
    with pytest.raises(ValueError, match="widths differ, give a projection"):
        hidden_state_loss(t_hs, s_hs, lm, None)


def test_logits_loss_matches_kl_div_with_temperature():
    torch.manual_seed(3)
    t, s = torch.randn(4, 3), torch.randn(4, 3)
    T = 2.0
    ref = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    assert float(logits_loss(t, s, T)) == pytest.approx(float(ref), rel=1e-5)
    assert float(logits_loss(t, t, T)) == pytest.approx(0.0, abs=1e-7)
    assert float(logits_loss(t[:, :1], s[:, :1])) == pytest.approx(float(F.mse_loss(s[:, :1], t[:, :1])))


def test_loss_weights_validation():
    with pytest.raises(ValueError, match="at least one loss weight must be positive"):
        LossWeights(relation=0.0)
    with pytest.raises(ValueError, match="loss weight hidden=-1 must be >= 0"):
        LossWeights(hidden=-1)


def test_losses_are_fp32_under_autocast():
    """Under bf16 autocast a .float() input still gives a bf16 matmul: the losses switch autocast
    off locally, so they equal the fp32 values (and their gradients are fp32 too)."""
    torch.manual_seed(4)
    t, s = torch.randn(2, 9, 64), torch.randn(2, 9, 48, requires_grad=True)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ref = relation_loss(t, s, mask, n_heads=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got32 = relation_loss(t, s, mask, n_heads=4)
        gl = logits_loss(t[:, 0, :5], s[:, 0, :5], 2.0)
    assert got32.dtype == torch.float32 and gl.dtype == torch.float32
    assert float(got32) == pytest.approx(float(ref), rel=1e-6)
    got32.backward()
    assert s.grad.dtype == torch.float32
