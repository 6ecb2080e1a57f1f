import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from autodistil.cost import exact_cost, paper_cost
from autodistil.export import build_student
from autodistil.nn import SuperBert, SuperBertConfig
from autodistil.space import SubnetConfig

# (L, H, R, A) -> formula column of PAPER.md section 3, and the paper's printed figures.
ROWS = [
    ((12, 768, 4, 12), 11.25e9, 109.5e6, 11.2e9, 109e6),
    ((6, 768, 4, 12), 5.66e9, 67.0e6, 5.66e9, 66.5e6),
    ((11, 352, 4, 10), 2.13e9, 26.8e6, 2.13e9, 26.8e6),
    ((12, 544, 3, 9), 4.40e9, 50.1e6, 4.40e9, 50.1e6),
    ((11, 352, 4, 8), 2.02e9, 26.1e6, 2.02e9, 26.1e6),
    ((7, 160, 3.5, 10), 0.275e9, 6.89e6, 0.27e9, 6.88e6),
]


@pytest.mark.parametrize("shape,f_macs,f_params,p_macs,p_params", ROWS)
def test_paper_formula_reproduces_paper_tables(shape, f_macs, f_params, p_macs, p_params):
    c = paper_cost(SubnetConfig(*shape))
    # the formula column is printed to 3-4 significant digits
    assert c.macs == pytest.approx(f_macs, rel=0.003)
    assert c.params == pytest.approx(f_params, rel=0.003)
    # the paper's own printed figures are within 1% of the formula, or equal it at their printed precision
    for got, printed in ((c.macs, p_macs), (c.params, p_params)):
        digits = 2 if f"{printed:.2g}" == f"{printed:.6g}" else 3  # the paper prints 2-3 significant digits
        assert got == pytest.approx(printed, rel=0.01) or float(f"{got:.{digits}g}") == printed


@pytest.mark.parametrize(
    "cfg,head_dim,seq",
    [
        (SubnetConfig(2, 48, 2.5, 3), 16, 37),
        (SubnetConfig(1, 64, 2.0, 2), 16, 128),  # A*d != H: AutoDistilBert
        (SubnetConfig(3, 32, 3.0, 4), 16, 9),
    ],
)
def test_exact_count_matches_flop_counter_and_numel(cfg, head_dim, seq):
    sb = SuperBert(SuperBertConfig(layers=3, hidden=64, heads=4, ffn=192, head_dim=head_dim, vocab_size=1000))
    student = build_student(sb, cfg)
    student.config._attn_implementation = "eager"
    ids = torch.randint(0, 1000, (1, seq))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        student(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)  # eager attention
    ec = exact_cost(cfg, head_dim, seq, vocab=1000)
    assert fc.get_total_flops() == 2 * ec.macs
    assert sum(p.numel() for p in student.parameters()) == ec.params


def test_exact_differs_from_paper_when_qkv_width_is_not_hidden():
    cfg = SubnetConfig(11, 352, 4, 10)
    assert exact_cost(cfg, 64).macs > paper_cost(cfg).macs * 1.3
    bert = SubnetConfig(12, 768, 4, 12)
    assert exact_cost(bert, 64).params == pytest.approx(paper_cost(bert).params, rel=1e-3)
