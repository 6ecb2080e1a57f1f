"""Facts about the machine a measurement runs on, recorded beside every figure: the CPU's name and
its identity below the name (a VM may mask the name), the load average, the GPU and its driver, and
the versions of torch, CUDA, Triton and Python. Reading them never needs a GPU."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Optional


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def cpu_id(cpuinfo: Optional[str] = None) -> Optional[str]:
    """The processor's identity below its marketing name, which a VM may mask ("AMD EPYC" on hosts
    of different speed), read from the first processor's block of /proc/cpuinfo: x86 vendor, family,
    model, stepping and cache size (the fields present), or the ARM implementer/part. None where it
    says neither."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return None
    first = {}
    for line in cpuinfo.strip().splitlines():
        if not line.strip():
            break  # the end of the first processor's block
        k, sep, v = line.partition(":")
        if sep:
            first.setdefault(k.strip(), v.strip())
    if first.get("cpu family") is not None and first.get("model") is not None:
        parts = [
            first.get("vendor_id"),
            f"family {first['cpu family']}",
            f"model {first['model']}",
            f"stepping {first['stepping']}" if first.get("stepping") else None,
            f"cache {first['cache size']}" if first.get("cache size") else None,
        ]
        return " ".join(p for p in parts if p)
    if first.get("CPU implementer") and first.get("CPU part"):
        return f"arm implementer {first['CPU implementer']} part {first['CPU part']}"
    return None


def loadavg() -> Optional[list]:
    """os.getloadavg() rounded to 0.01 (1, 5, 15 minutes); None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def nvidia_smi(query: str) -> str:
    """One nvidia-smi field of GPU 0 ("n/a" without nvidia-smi or a device)."""
    if shutil.which("nvidia-smi") is None:
        return "n/a"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        lines = out.stdout.strip().splitlines()
        return lines[0].strip() if out.returncode == 0 and lines else "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def device_info(device: str = "cpu") -> dict:
    """What a measurement record carries: device, its name (the GPU's, or the CPU model), NVIDIA
    driver, CUDA runtime, torch, Triton ("none" when absent), torch threads and Python."""
    import torch

    info = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "n/a",
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "none"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
        info["driver"] = nvidia_smi("driver_version")
    else:
        info["device_name"] = cpu_model()
        info["driver"] = "n/a"
    return info


def device_facts() -> dict:
    """device_info of the GPU when there is one (else the CPU), plus the CPU, its identity, the core
    count and load average, and on a GPU its capability, SM count, memory, bf16 support and clock;
    nvcc's release line ("none" without nvcc)."""
    import torch

    cuda = torch.cuda.is_available()
    f = device_info("cuda" if cuda else "cpu")
    f.update(
        cuda_available=cuda, cpu_count=os.cpu_count(), cpu=cpu_model(), cpu_id=cpu_id(), loadavg=loadavg()
    )
    if cuda:
        p = torch.cuda.get_device_properties(0)
        f.update(
            capability=f"{p.major}.{p.minor}",
            sm_count=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            max_sm_clock_mhz=nvidia_smi("clocks.max.sm"),
        )
    default = "/usr/local/cuda/bin/nvcc"
    nvcc = shutil.which("nvcc") or (default if os.path.exists(default) else None)
    f["nvcc"] = "none"
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
            f["nvcc"] = next((ln.strip() for ln in out.splitlines() if "release" in ln), out.strip()[-80:])
        except (OSError, subprocess.SubprocessError):
            pass
    return f


__all__ = ["cpu_model", "cpu_id", "loadavg", "nvidia_smi", "device_info", "device_facts"]
