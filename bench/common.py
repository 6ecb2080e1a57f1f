"""Shared benchmark helpers: device facts for every CSV row, CSV writing, CPU memory peaks."""
from __future__ import annotations

import ctypes
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autodistil.io import write_rows_csv
from autodistil.latency.profile import cpu_model

RESULTS = Path(__file__).parent / "results"


def device_info(device: str = "cpu") -> dict:
    info = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "none"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
        info["driver"] = torch.version.cuda
    else:
        info["device_name"] = cpu_model()
        info["driver"] = "n/a"
    return info


def write_csv(name: str, rows: list[dict]) -> Path:
    return write_rows_csv(RESULTS / name, rows)


def median_time(fn, warmup: int = 2, reps: int = 5) -> tuple[float, float, float]:
    """(median, p20, p80) seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    q = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))]
    return statistics.median(ts), q(0.2), q(0.8)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_bytes_fn():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def f():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd  # heap in use + mmapped chunks (large tensors)
    return f


_malloc_bytes = _malloc_bytes_fn()


class PeakCPUMemory(TorchDispatchMode):
    """Peak bytes allocated by glibc malloc above the start, sampled after every aten op
    (CPU tensors come from malloc/mmap; torch's CPU allocator does not cache)."""

    def __enter__(self):
        if _malloc_bytes is None:
            raise RuntimeError("PeakCPUMemory needs glibc's mallinfo2")
        self.base = self.peak = _malloc_bytes()
        self.traffic = 0  # bytes newly allocated by ops (sum of positive per-op deltas)
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = _malloc_bytes()
        out = func(*args, **(kwargs or {}))
        after = _malloc_bytes()
        self.traffic += max(0, after - before)
        self.peak = max(self.peak, after)
        return out

    @property
    def traffic_mb(self) -> float:
        return self.traffic / 2**20

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20
