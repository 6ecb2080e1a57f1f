"""The frozen teacher, run through a SuperBert at exactly its own shape."""

from __future__ import annotations

import torch

from ..space import TeacherShape, teacher_space
from .. import families
from .superbert import SuperBert, SuperBertConfig


class TeacherNet(torch.nn.Module):
    """The frozen teacher run through a SuperBert at exactly its shape and with its family's
    conventions (autodistil/families.py; reproduces the HF teacher, tested for every family) so Q/K/V,
    attention maps and hidden states come from one code path."""

    def __init__(self, hf_model, shape: TeacherShape | None = None):
        super().__init__()
        c = hf_model.config
        shape = shape or families.teacher_shape(c)
        conventions = families.supernet_conventions(c)
        self.net = SuperBert(SuperBertConfig.for_spaces(teacher_space(shape), **conventions))
        self.net.load_from_teacher(hf_model.state_dict())
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, ids, mask, **kw):
        return self.net(ids, mask, **kw)
