"""Builds steerkern._C: CUDA kernels when torch has CUDA and nvcc is found, CPU kernels always.

STEERKERN_BUILD=cuda|cpu forces one kind (default: auto). TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default 8.0;9.0: A100, H100/H200).
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

DEFAULT_CUDA_ARCHS = "8.0;9.0"


def build_kind() -> str:
    kind = os.environ.get("STEERKERN_BUILD", "auto").lower()
    if kind not in ("auto", "cuda", "cpu"):
        raise SystemExit(f"STEERKERN_BUILD must be auto, cuda or cpu, got {kind!r}")
    cuda_ready = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if kind == "cuda" and not cuda_ready:
        raise SystemExit("STEERKERN_BUILD=cuda needs a CUDA build of torch and CUDA_HOME (nvcc)")
    if kind == "auto":
        return "cuda" if cuda_ready else "cpu"
    return kind


def sm_names(arch_list: str) -> str:
    """'8.0;9.0+PTX' -> 'sm_80,sm_90' (commas: the value travels through a shell command line)."""
    archs = [a.split("+")[0].replace(".", "") for a in arch_list.replace(" ", ";").split(";") if a]
    return ",".join(f"sm_{a}" for a in archs)


def extension():
    kind = build_kind()
    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    # Build facts for build_info(), as C++-only flags: nvcc would split a value at its commas.
    flags = {"cxx": ["-O3", "-fopenmp", f"-DSTEERKERN_TORCH_VERSION={torch.__version__}"]}
    if kind == "cpu":
        return cpp_extension.CppExtension(
            "steerkern._C", cpu_sources, extra_compile_args=flags, extra_link_args=["-fopenmp"]
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    flags["cxx"] += [
        "-DSTEERKERN_WITH_CUDA",
        f"-DSTEERKERN_CUDA_ARCHS={sm_names(os.environ['TORCH_CUDA_ARCH_LIST'])}",
        f"-DSTEERKERN_CUDA_VERSION={torch.version.cuda}",
    ]
    flags["nvcc"] = ["-O3", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "steerkern._C",
        cpu_sources + sorted(glob.glob("csrc/*.cu")),
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"],
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": cpp_extension.BuildExtension})
