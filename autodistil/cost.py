"""FLOPs and parameter counts.

Units: "FLOPs" here are multiply-accumulates (MACs) of one sequence, as the paper reports
them; FlopCounterMode counts 2 FLOPs per MAC.

(a) ``paper_*``: the paper's formulas (PAPER.md section 3). They charge attention as if
    the Q/K/V width were H*A/12 (head dim H/12).
(b) ``exact_*``: what our model executes: Q/K/V width A*head_dim, independent of H.
"""

from __future__ import annotations

from dataclasses import dataclass

from .space import SubnetConfig

VOCAB, POSITIONS, TYPES = 30522, 512, 2


@dataclass(frozen=True)
class Cost:
    macs: float
    params: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def paper_macs(cfg: SubnetConfig, seq_len: int = 128) -> float:
    n, L, H, R, A = seq_len, cfg.layers, cfg.hidden, cfg.ffn_ratio, cfg.heads
    return (
        L * (3 * n * H * H * A / 12 + 2 * n * n * H * A / 12 + n * H * H + 2 * n * R * H * H)
        + n * H * H
        + 2 * H
    )


def paper_params(
    cfg: SubnetConfig, vocab: int = VOCAB, positions: int = POSITIONS, types: int = TYPES
) -> float:
    L, H, R, A = cfg.layers, cfg.hidden, cfg.ffn_ratio, cfg.heads
    return (
        H * (vocab + positions + types + 2)
        + L * (H * H + 3 * H * H * A / 12 + 6 * H)
        + L * (2 * R * H * H + R * H + 3 * H)
        + H * H
        + 2 * H
    )


def paper_cost(cfg: SubnetConfig, seq_len: int = 128) -> Cost:
    return Cost(paper_macs(cfg, seq_len), int(round(paper_params(cfg))))


def exact_layer_macs(hidden: int, heads: int, ffn: int, head_dim: int, seq_len: int) -> int:
    """MACs of one encoder layer on one sequence: Q/K/V + scores + context + out + FFN."""
    n, H, w = seq_len, hidden, heads * head_dim
    return 3 * n * H * w + 2 * n * n * w + n * w * H + 2 * n * H * ffn


def exact_macs(cfg: SubnetConfig, head_dim: int = 64, seq_len: int = 128, pooler: bool = True) -> int:
    """Matmul MACs of our model (embeddings and LayerNorm/softmax are not matmuls)."""
    total = cfg.layers * exact_layer_macs(cfg.hidden, cfg.heads, cfg.ffn, head_dim, seq_len)
    return total + (cfg.hidden * cfg.hidden if pooler else 0)  # pooler sees the [CLS] token only


def exact_params(
    cfg: SubnetConfig,
    head_dim: int = 64,
    vocab: int = VOCAB,
    positions: int = POSITIONS,
    types: int = TYPES,
    pooler: bool = True,
) -> int:
    H, w, f = cfg.hidden, cfg.heads * head_dim, cfg.ffn
    emb = H * (vocab + positions + types) + 2 * H
    layer = 3 * (H * w + w) + (w * H + H) + 2 * H + (H * f + f) + (f * H + H) + 2 * H
    return emb + cfg.layers * layer + ((H * H + H) if pooler else 0)


def exact_cost(
    cfg: SubnetConfig,
    head_dim: int = 64,
    seq_len: int = 128,
    vocab: int = VOCAB,
    positions: int = POSITIONS,
    types: int = TYPES,
) -> Cost:
    return Cost(exact_macs(cfg, head_dim, seq_len), exact_params(cfg, head_dim, vocab, positions, types))
