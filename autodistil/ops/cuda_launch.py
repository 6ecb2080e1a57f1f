"""Launch helpers of the CUDA backend (cuda_backend): dtype codes, raw pointers, the current stream,
the launch device. Importing it never loads autodistil._C."""

from __future__ import annotations

import contextlib

import torch

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def ptr(t) -> int:
    """The tensor's device pointer, 0 for None (an absent optional operand)."""
    return 0 if t is None else t.data_ptr()


def stream(device) -> int:
    """The raw handle of the device's current CUDA stream."""
    return torch.cuda.current_stream(device).cuda_stream


def on(device):
    """Make the tensors' device current for the launch (kernels go to that device's stream)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)
