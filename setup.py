"""autodistil build. The optional CUDA extension (csrc/ -> autodistil._C) is built through
CMake when nvcc is found; AUTODISTIL_BUILD_CUDA=0 skips it, AUTODISTIL_CUDA_ARCHS picks
architectures (default "80;90"). Building needs no torch. The cuBLASLt GEMMs need cublasLt.h at
build time only (the nvidia-cublas wheel ships it; AUTODISTIL_CUBLAS_ROOT overrides where), the
library itself is resolved at run time."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _nvcc():
    for c in (
        os.environ.get("CUDACXX"),
        shutil.which("nvcc"),
        "/usr/local/cuda/bin/nvcc",
        "/usr/local/bin/nvcc",
    ):
        if c and Path(c).is_file():
            return c
    return None


def _cublas_include_hints():
    """Folders holding cublasLt.h: $AUTODISTIL_CUBLAS_ROOT/include, then the nvidia wheels' include
    folders (nvidia/cu13/include for CUDA 13, nvidia/cublas/include for CUDA 12) found through this
    interpreter, and through the target environment's site-packages (pip's isolated builds hide it
    from sys.path)."""
    roots = []
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) for p in spec.submodule_search_locations]
    for key in ("purelib", "platlib"):
        roots.append(Path(sysconfig.get_paths()[key]) / "nvidia")
    cands = []
    if os.environ.get("AUTODISTIL_CUBLAS_ROOT"):
        cands.append(Path(os.environ["AUTODISTIL_CUBLAS_ROOT"]) / "include")
    for r in roots:
        cands += sorted(r.glob("cu*/include"), reverse=True) + [r / "cublas" / "include"]
    out = []
    for c in cands:
        if (c / "cublasLt.h").is_file() and str(c) not in out:
            out.append(str(c))
    return out


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        why = None
        if os.environ.get("AUTODISTIL_BUILD_CUDA", "1") == "0":
            why = "AUTODISTIL_BUILD_CUDA=0"
        elif not _nvcc():
            why = "no nvcc found"
        elif not any((ROOT / "csrc").glob("*.cu")):
            why = "no CUDA sources in csrc/"
        if why:
            print(
                f"autodistil: skipping the CUDA extension ({why}); the torch and triton backends still work"
            )
            return
        super().run()

    def build_extension(self, ext):
        import pybind11

        out = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build = Path(self.build_temp).resolve() / ext.name
        build.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("AUTODISTIL_CUDA_ARCHS", "80;90")
        cfg = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
            f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DAUTODISTIL_CUBLAS_INCLUDE_HINTS={';'.join(_cublas_include_hints())}",
        ]
        if shutil.which("ninja"):
            cfg.append("-GNinja")
        subprocess.check_call(["cmake", str(ROOT), *cfg], cwd=build)
        subprocess.check_call(["cmake", "--build", ".", "-j", str(os.cpu_count() or 2)], cwd=build)


setup(
    name="autodistil",
    version="0.1.0",
    description="AutoDistil: few-shot task-agnostic NAS for distilling BERT, with sliced-weight kernels",
    python_requires=">=3.9",
    packages=[
        "autodistil",
        "autodistil.cli",
        "autodistil.ops",
        "autodistil.nn",
        "autodistil.distill",
        "autodistil.latency",
        "autodistil.search",
        "autodistil.data",
        "autodistil.finetune",
        "autodistil.kernels",
    ],
    package_dir={"autodistil": "autodistil", "autodistil.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "transformers>=4.40",
        "datasets>=2.18",
        "safetensors",
        "numpy",
        "tqdm",
        "matplotlib",
        "pyyaml",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "deepspeed": ["deepspeed>=0.14"],
        "onnx": ["onnx", "onnxruntime"],
        "cuda": ["nvidia-cublas>=13,<14"],  # cublasLt.h for the build, libcublasLt.so.13 at run time
        "dev": ["pytest", "pytest-benchmark", "scipy", "pybind11", "cmake", "ninja", "ruff"],
    },
    ext_modules=[CMakeExtension("autodistil._C")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["autodistil=autodistil.cli:main"]},
    zip_safe=False,
)
