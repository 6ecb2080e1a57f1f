"""Shared helpers of the Triton kernels."""

from __future__ import annotations

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(*tensors) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cuda" and not INTERPRET:
            raise ValueError(
                f"triton backend: tensor on {t.device} needs a CUDA device "
                f"(or TRITON_INTERPRET=1 for the CPU interpreter)"
            )
