"""The frozen teacher, run through a SuperBert at exactly its own shape."""
from __future__ import annotations

import torch

from ..space import teacher_space
from .superbert import SuperBert, SuperBertConfig


class TeacherNet(torch.nn.Module):
    """The frozen teacher run through a SuperBert at exactly its shape (reproduces the HF
    teacher, tested) so Q/K/V, attention maps and hidden states come from one code path."""

    def __init__(self, hf_model, shape):
        super().__init__()
        c = hf_model.config
        self.net = SuperBert(SuperBertConfig.for_spaces(teacher_space(shape), vocab_size=c.vocab_size,
                                                        max_position=c.max_position_embeddings,
                                                        type_vocab_size=c.type_vocab_size,
                                                        layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id))
        self.net.load_from_teacher(hf_model.state_dict())
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, ids, mask, **kw):
        return self.net(ids, mask, **kw)
