import random
from collections import Counter

import pytest

from autodistil.space import (
    PAPER_SPACES,
    Range,
    SearchSpace,
    SubnetConfig,
    TeacherShape,
    derive_spaces,
    teacher_space,
)


def test_paper_spaces_have_256_subnets_and_extremes():
    for name, s in PAPER_SPACES.items():
        subnets = list(s)
        assert len(subnets) == len(s) == 256 and len(set(subnets)) == 256
        assert s.largest() == max(subnets, key=lambda c: (c.layers, c.hidden, c.ffn_ratio, c.heads))
        assert all(c in s for c in subnets)
    assert PAPER_SPACES["tiny"].smallest() == SubnetConfig(4, 128, 2.0, 7)
    assert PAPER_SPACES["base"].largest() == SubnetConfig(12, 640, 4.0, 12)


def test_derive_from_bert_base_is_the_paper_space():
    spaces = derive_spaces(TeacherShape(12, 768, 12, 3072))
    assert spaces == PAPER_SPACES


def test_derive_from_minilm_teacher_documented_default():
    s = derive_spaces(TeacherShape(6, 384, 12, 1536))
    assert s["tiny"].to_dict() == {
        "name": "tiny",
        "layers": [2, 5, 1],
        "hidden": [64, 112, 16],
        "ffn_ratio": [2.0, 3.5, 0.5],
        "heads": [7, 10, 1],
        "head_dim": 32,
    }
    assert s["small"].layers.values == (3, 4, 5, 6) and s["small"].hidden.values == (128, 144, 160, 176)
    assert s["base"].hidden.values == (272, 288, 304, 320) and s["base"].heads.values == (9, 10, 11, 12)
    for sp in s.values():
        assert len(sp) == 256
        assert sp.largest().layers <= 6 and sp.largest().hidden <= 384 and sp.largest().heads <= 12


def test_sampling_is_uniform_and_in_space():
    s = PAPER_SPACES["small"]
    rng = random.Random(0)
    draws = [s.sample(rng) for _ in range(4000)]
    assert all(c in s for c in draws)
    for f in ("layers", "hidden", "ffn_ratio", "heads"):
        counts = Counter(getattr(c, f) for c in draws)
        assert len(counts) == 4 and min(counts.values()) > 850  # ~1000 each


@pytest.mark.parametrize(
    "cfg,msg",
    [
        (
            SubnetConfig(8, 256, 2.5, 7),
            "layers=8 is outside search space 'small': allowed layers is 9..12 step 1",
        ),
        (
            SubnetConfig(9, 260, 2.5, 7),
            "hidden=260 is outside search space 'small': allowed hidden is 256..352 step 32",
        ),
        (
            SubnetConfig(9, 256, 2.0, 7),
            "ffn_ratio=2 is outside search space 'small': allowed ffn_ratio is 2.5..4 step 0.5",
        ),
        (
            SubnetConfig(9, 256, 2.5, 11),
            "heads=11 is outside search space 'small': allowed heads is 7..10 step 1",
        ),
    ],
)
def test_outside_space_names_field_value_range(cfg, msg):
    with pytest.raises(ValueError) as e:
        PAPER_SPACES["small"].validate(cfg)
    assert str(e.value) == msg
    assert cfg not in PAPER_SPACES["small"]


@pytest.mark.parametrize(
    "args,msg",
    [
        ((0, 128, 2.0, 7), "SubnetConfig.layers=0 is not allowed: it must be a positive integer"),
        ((4, -128, 2.0, 7), "SubnetConfig.hidden=-128 is not allowed: it must be a positive integer"),
        ((4, 128, 0.0, 7), "SubnetConfig.ffn_ratio=0.0 is not allowed: it must be a positive number"),
        ((4, 128, 2.0, 0), "SubnetConfig.heads=0 is not allowed: it must be a positive integer"),
        (
            (4, 102, 2.25, 7),
            "SubnetConfig.ffn_ratio=2.25 with hidden=102 gives a non-integer FFN width 229.5",
        ),
        ((4, 101, 2.5, 7), "non-integer FFN width 252.5"),
    ],
)
def test_bad_subnet_values(args, msg):
    with pytest.raises(ValueError, match=msg.replace(".", r"\.").replace("(", r"\(")):
        SubnetConfig(*args)


def test_range_and_space_errors():
    with pytest.raises(ValueError, match="not reached from low in whole steps"):
        Range(1, 4, 2)
    with pytest.raises(ValueError, match="below low"):
        Range(5, 4, 1)
    with pytest.raises(ValueError, match="non-integer FFN width"):
        SearchSpace("x", Range(1, 2, 1), Range(33, 33, 1), Range(2.5, 2.5, 1.0), Range(1, 1, 1), 16)


def test_space_json_round_trip_and_teacher_space():
    for s in PAPER_SPACES.values():
        assert SearchSpace.from_dict(s.to_dict()) == s
    ts = teacher_space(TeacherShape(6, 384, 12, 1536))
    assert ts.largest() == SubnetConfig(6, 384, 4.0, 12) and ts.head_dim == 32
