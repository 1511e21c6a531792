"""GemmaScope sparse autoencoders: the original ``params.npz`` and SAEs stored under its tensor names.

``params.npz`` (e.g. ``layer_20/width_16k/average_l0_71/params.npz`` in google/gemma-scope-2b-pt-res)
holds ``W_enc [d, N]``, ``W_dec [N, d]``, ``b_enc [N]``, ``threshold [N]`` and ``b_dec [d]``. The
decoder rows are the steering directions; detection is the JumpReLU encoder
``(pre > threshold) * ReLU(pre)`` with ``pre = h @ W_enc + b_enc``.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ._common import fail, float_tensor, layer_from_path, require_file

SAE_TENSORS = ("W_dec", "W_enc", "b_enc", "threshold", "b_dec")


def sae_parts(path: Path, tensors) -> dict:
    """Constructor tensors of an SAE given its GemmaScope-named tensors, shapes checked against W_dec."""
    missing = [name for name in SAE_TENSORS if name not in tensors]
    if missing:
        fail(path, f"is missing {', '.join(missing)}; an SAE file holds {', '.join(SAE_TENSORS)}")
    rows, width = float_tensor(path, "W_dec", tensors["W_dec"], 2).shape
    expected = {"W_enc": (width, rows), "b_enc": (rows,), "threshold": (rows,), "b_dec": (width,)}
    for name, shape in expected.items():
        found = float_tensor(path, name, tensors[name], len(shape)).shape
        if tuple(found) != shape:
            fail(path, f"{name} has shape {tuple(found)}, expected {shape} to match W_dec {(rows, width)}")
    return {
        "weight": tensors["W_dec"],
        "encoder": tensors["W_enc"],
        "b_enc": tensors["b_enc"],
        "threshold": tensors["threshold"],
        "b_dec": tensors["b_dec"],
    }


def read_params_npz(path: Path) -> dict:
    require_file(path)
    if not zipfile.is_zipfile(path):
        fail(path, "is not a NumPy .npz archive; is it truncated or corrupted?")
    try:
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        fail(path, f"cannot be read as a NumPy .npz archive; is it truncated or corrupted? ({error})")
    parts = sae_parts(path, {name: torch.from_numpy(array) for name, array in arrays.items()})
    parts["provenance"] = {
        "layer": layer_from_path(path),
        "method": "GemmaScopeSAE",
        "source": str(path),
        "format": "gemmascope-npz",
    }
    return parts
