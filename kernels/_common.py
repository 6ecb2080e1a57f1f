"""Shared helpers of the Triton kernels."""
from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def inplace_grads() -> bool:
    """The torch backend's grad mode: "inplace" writes weight gradients into .grad slices;
    "autograd" returns them (DDP / ZeRO hooks fire on autograd's accumulation)."""
    from autodistil.torch_ops import grad_mode
    return grad_mode() == "inplace"


def grad_slot(p: torch.Tensor) -> torch.Tensor:
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def check_device(*tensors) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cuda" and not INTERPRET:
            raise ValueError(f"triton backend: tensor on {t.device} needs a CUDA device "
                             f"(or TRITON_INTERPRET=1 for the CPU interpreter)")
