"""Which backend runs the ops: the compiled ``steerkern._C`` or the PyTorch reference."""

from __future__ import annotations

import os
import warnings

import torch

BACKEND_ENV = "STEERKERN_BACKEND"


_NOT_LOADED = object()
_compiled = _NOT_LOADED


def load_compiled():
    """Import ``_C`` once (its import registers ``torch.ops.steerkern``); None if unavailable.

    Warns once when it is missing, unless the reference backend was asked for. A plain global
    rather than a cache decorator keeps the check cheap for torch.compile to trace.
    """
    global _compiled
    if _compiled is _NOT_LOADED:
        _compiled = _import_compiled()
    return _compiled


def _import_compiled():
    try:
        from . import _C
    except ImportError as error:
        if requested_backend() == "reference":
            return None
        warnings.warn(
            f"steerkern._C could not be imported ({error}); the ops run the PyTorch reference",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return _C


def requested_backend() -> str:
    choice = os.environ.get(BACKEND_ENV, "auto").lower()
    if choice not in ("auto", "compiled", "reference"):
        raise ValueError(f"{BACKEND_ENV} must be auto, compiled or reference, got {choice!r}")
    return choice


def use_compiled(device: torch.device | None = None) -> bool:
    """Whether the compiled kernels run tensors on ``device``: a ``_C`` built without CUDA leaves
    CUDA tensors to the reference (with one warning) instead of the dispatcher's error."""
    choice = requested_backend()
    if choice == "reference":
        return False
    compiled = load_compiled()
    if compiled is None and choice == "compiled":
        raise RuntimeError(f"{BACKEND_ENV}=compiled but steerkern._C could not be imported")
    if compiled is None:
        return False
    if device is not None and device.type == "cuda" and not compiled.WITH_CUDA:
        _warn_no_cuda_kernels()
        return False
    return True


_warned_no_cuda = False


def _warn_no_cuda_kernels():
    global _warned_no_cuda
    if not _warned_no_cuda:
        _warned_no_cuda = True
        warnings.warn(
            "steerkern._C was built without CUDA kernels; CUDA tensors run the PyTorch reference "
            "(rebuild with CUDA_HOME pointing at the CUDA toolkit for the fused kernels)",
            RuntimeWarning,
            stacklevel=4,
        )


def build_info() -> dict:
    """Backend in use, what ``_C`` was compiled with, and the running torch / CUDA versions."""
    compiled = None if requested_backend() == "reference" else load_compiled()
    info = {
        "backend": "compiled" if compiled is not None else "reference",
        "compiled_with_cuda": False,
        "cuda_archs": [],
        "built_torch": None,
        "built_cuda": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_isa": None,
    }
    if compiled is not None:
        info.update(
            compiled_with_cuda=bool(compiled.WITH_CUDA),
            cuda_archs=[a for a in compiled.CUDA_ARCHS.split(",") if a],
            built_torch=compiled.TORCH_VERSION,
            built_cuda=compiled.CUDA_VERSION or None,
            cpu_isa=compiled.cpu_isa(),
        )
    return info
