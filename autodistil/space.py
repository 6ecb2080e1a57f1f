"""The K-shot search space: subnet configs, per-dimension ranges, the paper's subspaces.

A subnet is (layers L, hidden H, MLP ratio R, heads A). Every head keeps the teacher's
head dim d, so the Q/K/V width is A*d, independent of H (as in the paper).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

_FIELDS = ("layers", "hidden", "ffn_ratio", "heads")


@dataclass(frozen=True, order=True)
class SubnetConfig:
    layers: int
    hidden: int
    ffn_ratio: float
    heads: int

    def __post_init__(self):
        for name in ("layers", "hidden", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"SubnetConfig.{name}={v!r} is not allowed: it must be a positive integer")
        r = self.ffn_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"SubnetConfig.ffn_ratio={r!r} is not allowed: it must be a positive number")
        object.__setattr__(self, "ffn_ratio", float(r))
        w = r * self.hidden
        if abs(w - round(w)) > 1e-6:
            raise ValueError(
                f"SubnetConfig.ffn_ratio={r} with hidden={self.hidden} gives a non-integer FFN width "
                f"{w:g}: ffn_ratio * hidden must be a whole number"
            )

    @property
    def ffn(self) -> int:
        """FFN inner width R*H."""
        return int(round(self.ffn_ratio * self.hidden))

    def qkv_width(self, head_dim: int) -> int:
        return self.heads * head_dim

    def as_dict(self) -> dict:
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "ffn_ratio": self.ffn_ratio,
            "heads": self.heads,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SubnetConfig":
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise ValueError(f"subnet description lacks {missing}; it needs {list(_FIELDS)}")
        return cls(int(d["layers"]), int(d["hidden"]), float(d["ffn_ratio"]), int(d["heads"]))

    @classmethod
    def parse(cls, text: str) -> "SubnetConfig":
        """The inverse of ``short``: 'L6-H384-R4-A12' (layers, hidden, MLP ratio, heads)."""
        import re

        m = re.fullmatch(r"\s*L(\d+)-H(\d+)-R(\d+(?:\.\d+)?)-A(\d+)\s*", text or "")
        if not m:
            raise ValueError(
                f"subnet {text!r} is not of the form L<layers>-H<hidden>-R<MLP ratio>-A<heads>, "
                f"e.g. L6-H384-R4-A12"
            )
        return cls(int(m[1]), int(m[2]), float(m[3]), int(m[4]))

    def short(self) -> str:
        return f"L{self.layers}-H{self.hidden}-R{self.ffn_ratio:g}-A{self.heads}"


@dataclass(frozen=True)
class Range:
    """Values low, low+step, ..., high (inclusive)."""

    low: float
    high: float
    step: float

    def __post_init__(self):
        if self.step <= 0:
            raise ValueError(f"Range step must be positive, got {self.step}")
        if self.high < self.low:
            raise ValueError(f"Range high {self.high} is below low {self.low}")
        n = (self.high - self.low) / self.step
        if abs(n - round(n)) > 1e-6:
            raise ValueError(
                f"Range ({self.low}, {self.high}, {self.step}): high is not reached from low in whole steps"
            )

    @property
    def values(self) -> tuple:
        n = int(round((self.high - self.low) / self.step)) + 1
        vals = [self.low + k * self.step for k in range(n)]
        if all(float(v).is_integer() for v in vals) and float(self.step).is_integer():
            return tuple(int(round(v)) for v in vals)
        return tuple(round(float(v), 6) for v in vals)

    def __contains__(self, v) -> bool:
        return any(abs(v - x) < 1e-6 for x in self.values)

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g} step {self.step:g}"

    def as_list(self) -> list:
        return [self.low, self.high, self.step]


@dataclass(frozen=True)
class SearchSpace:
    """One subspace: a grid over (layers, hidden, ffn_ratio, heads) at a fixed head dim."""

    name: str
    layers: Range
    hidden: Range
    ffn_ratio: Range
    heads: Range
    head_dim: int = 64

    def __post_init__(self):
        if not isinstance(self.head_dim, int) or self.head_dim <= 0:
            raise ValueError(f"SearchSpace.head_dim={self.head_dim!r}: must be a positive integer")
        for c in (self.largest(), self.smallest()):
            c  # constructing validates positivity and integer FFN width
        for h in self.hidden.values:
            for r in self.ffn_ratio.values:
                SubnetConfig(1, int(h), float(r), 1)

    # --- enumeration -------------------------------------------------------------
    def __iter__(self) -> Iterator[SubnetConfig]:
        for l, h, r, a in itertools.product(
            self.layers.values, self.hidden.values, self.ffn_ratio.values, self.heads.values
        ):
            yield SubnetConfig(int(l), int(h), float(r), int(a))

    def __len__(self) -> int:
        return (
            len(self.layers.values)
            * len(self.hidden.values)
            * len(self.ffn_ratio.values)
            * len(self.heads.values)
        )

    def largest(self) -> SubnetConfig:
        return SubnetConfig(
            int(self.layers.high), int(self.hidden.high), float(self.ffn_ratio.high), int(self.heads.high)
        )

    def smallest(self) -> SubnetConfig:
        return SubnetConfig(
            int(self.layers.low), int(self.hidden.low), float(self.ffn_ratio.low), int(self.heads.low)
        )

    def sample(self, rng: random.Random) -> SubnetConfig:
        """Uniform over the grid (each dimension independently uniform)."""
        return SubnetConfig(
            int(rng.choice(self.layers.values)),
            int(rng.choice(self.hidden.values)),
            float(rng.choice(self.ffn_ratio.values)),
            int(rng.choice(self.heads.values)),
        )

    def __contains__(self, cfg: SubnetConfig) -> bool:
        try:
            self.validate(cfg)
            return True
        except ValueError:
            return False

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        for f in _FIELDS:
            rng: Range = getattr(self, f)
            v = getattr(cfg, f)
            if v not in rng:
                raise ValueError(
                    f"{f}={v:g} is outside search space '{self.name}': allowed {f} is {rng.describe()}"
                )
        return cfg

    # --- maxima the supernet is sized to -------------------------------------------
    @property
    def max_ffn(self) -> int:
        return max(int(round(h * r)) for h in self.hidden.values for r in self.ffn_ratio.values)

    def describe(self) -> str:
        return (
            f"{self.name}: layers {self.layers.describe()}, hidden {self.hidden.describe()}, "
            f"ffn_ratio {self.ffn_ratio.describe()}, heads {self.heads.describe()} "
            f"(head dim {self.head_dim}; {len(self)} subnets)"
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "layers": self.layers.as_list(),
            "hidden": self.hidden.as_list(),
            "ffn_ratio": self.ffn_ratio.as_list(),
            "heads": self.heads.as_list(),
            "head_dim": self.head_dim,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        try:
            return cls(
                str(d["name"]),
                Range(*d["layers"]),
                Range(*d["hidden"]),
                Range(*d["ffn_ratio"]),
                Range(*d["heads"]),
                int(d.get("head_dim", 64)),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad search space description {d!r}: {e}") from None


def union_max(spaces: Sequence[SearchSpace]) -> SubnetConfig:
    """Element-wise maximum over several spaces (what one shared supernet is sized to)."""
    return SubnetConfig(
        max(int(s.layers.high) for s in spaces),
        max(int(s.hidden.high) for s in spaces),
        max(float(s.ffn_ratio.high) for s in spaces),
        max(int(s.heads.high) for s in spaces),
    )


# The paper's K=3 subspaces (PAPER.md section 2); head dim 64 (BERT-base teacher).
PAPER_SPACES = {
    "tiny": SearchSpace(
        "tiny", Range(4, 7, 1), Range(128, 224, 32), Range(2.0, 3.5, 0.5), Range(7, 10, 1), 64
    ),
    "small": SearchSpace(
        "small", Range(9, 12, 1), Range(256, 352, 32), Range(2.5, 4.0, 0.5), Range(7, 10, 1), 64
    ),
    "base": SearchSpace(
        "base", Range(9, 12, 1), Range(544, 640, 32), Range(2.5, 4.0, 0.5), Range(9, 12, 1), 64
    ),
}
BERT_BASE_SHAPE = dict(layers=12, hidden=768, heads=12, ffn_ratio=4.0, head_dim=64)


@dataclass(frozen=True)
class TeacherShape:
    layers: int
    hidden: int
    heads: int
    ffn: int
    head_dim: int = field(default=0)

    def __post_init__(self):
        if self.head_dim == 0:
            if self.hidden % self.heads:
                raise ValueError(f"teacher hidden {self.hidden} is not divisible by its {self.heads} heads")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def ffn_ratio(self) -> float:
        return self.ffn / self.hidden

    def as_subnet(self, layers: int | None = None) -> "SubnetConfig":
        """The teacher (or its first `layers` layers) as a SubnetConfig."""
        return SubnetConfig(
            self.layers if layers is None else layers, self.hidden, self.ffn_ratio, self.heads
        )


def _round_to(v: float, m: int) -> int:
    return max(m, int(round(v / m)) * m)


def _scale_layers(rng: Range, s: float, cap: int) -> Range:
    n = len(rng.values)
    lo = max(1, int(round(rng.low * s)))
    hi = min(cap, max(lo, int(round(rng.high * s))))
    if hi - lo + 1 < n:  # keep n distinct values where the teacher's depth allows
        hi = min(cap, lo + n - 1)
        lo = max(1, hi - n + 1)
    return Range(lo, hi, 1)


def derive_space(paper: SearchSpace, teacher: TeacherShape) -> SearchSpace:
    """Scale one paper subspace to a teacher: hidden * t_hidden/768 (multiples of 16),
    layers * t_layers/12 (4 distinct values kept where possible), heads * t_heads/12,
    MLP ratios unchanged, every maximum clamped to the teacher."""
    sh = teacher.hidden / 768
    h_hi = min(teacher.hidden - teacher.hidden % 16 or teacher.hidden, _round_to(paper.hidden.high * sh, 16))
    h_step = _round_to(paper.hidden.step * sh, 16)
    h_lo = min(_round_to(paper.hidden.low * sh, 16), h_hi)
    h_lo = h_hi - h_step * ((h_hi - h_lo) // h_step)  # land exactly on h_hi
    sa = teacher.heads / 12
    a_lo = max(1, int(round(paper.heads.low * sa)))
    a_hi = min(teacher.heads, max(a_lo, int(round(paper.heads.high * sa))))
    r_hi = min(float(paper.ffn_ratio.high), teacher.ffn_ratio)
    r_lo = min(float(paper.ffn_ratio.low), r_hi)
    r_step = float(paper.ffn_ratio.step)
    r_hi = r_lo + r_step * math.floor((r_hi - r_lo) / r_step + 1e-9)
    return SearchSpace(
        paper.name,
        _scale_layers(paper.layers, teacher.layers / 12, teacher.layers),
        Range(h_lo, h_hi, h_step),
        Range(r_lo, r_hi, r_step),
        Range(a_lo, a_hi, 1),
        teacher.head_dim,
    )


def derive_spaces(teacher: TeacherShape, names: Sequence[str] = ("tiny", "small", "base")) -> dict:
    out = {}
    for n in names:
        if n not in PAPER_SPACES:
            raise ValueError(f"unknown subspace '{n}': allowed are {sorted(PAPER_SPACES)}")
        out[n] = derive_space(PAPER_SPACES[n], teacher)
    return out


def teacher_space(teacher: TeacherShape, name: str = "teacher") -> SearchSpace:
    """A single-point-at-the-top space whose maximum is exactly the teacher's shape
    (useful to check teacher initialisation): layers 1..L, hidden 16-steps up to H, ..."""
    r = teacher.ffn_ratio
    return SearchSpace(
        name,
        Range(1, teacher.layers, 1),
        Range(teacher.hidden % 16 or 16, teacher.hidden, 16),
        Range(r, r, 1.0),
        Range(1, teacher.heads, 1),
        teacher.head_dim,
    )
