"""Concept-dictionary file formats: find the dictionary in a folder and read it.

Each reader returns ``ConceptDictionary``'s keyword arguments with CPU tensors (mapped from the
file where the format allows) and names the offending file in every error it raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import axbench, gemmascope, native
from ._common import fail, load_torch_file

DICTIONARY_FILES = "*.safetensors, weight.pt, <Method>_weight.pt, GemmaScopeSAE.pt or params.npz"


def is_dictionary_file(path: Path) -> bool:
    return path.is_file() and (
        path.suffix == ".safetensors"
        or axbench.is_weight_file(path)
        or path.name in (axbench.PRUNED_SAE_FILE, "params.npz")
    )


def find_dictionary_file(path: Path) -> Path:
    """``path`` itself, the one dictionary file in the folder, or the one in its only dictionary subfolder."""
    if path.is_file():
        return path
    candidates = sorted(item for item in path.iterdir() if is_dictionary_file(item))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(item.name for item in candidates)
        fail(path, f"holds several dictionaries ({names}); pass the path of the one to load")
    # Released AxBench dictionaries keep one folder per layer (l20/); training runs write train/.
    nested = sorted(
        folder
        for folder in path.iterdir()
        if folder.is_dir() and not folder.name.startswith(".") and any(map(is_dictionary_file, folder.iterdir()))
    )
    if len(nested) == 1:
        return find_dictionary_file(nested[0])
    if nested:
        names = ", ".join(folder.name for folder in nested)
        fail(path, f"holds dictionaries in several subfolders ({names}); choose one with subfolder=")
    raise FileNotFoundError(f"{path}: no concept dictionary here (looked for {DICTIONARY_FILES})")


def read_dictionary(file: Path) -> dict:
    if file.suffix == ".safetensors":
        return native.read(file)
    if file.suffix == ".npz":
        return gemmascope.read_params_npz(file)
    if file.suffix in (".pt", ".pth"):
        content = load_torch_file(file)
        if isinstance(content, Mapping):
            return axbench.read_pruned_sae(file, content)
        return axbench.read_weights(file, content)
    fail(file, "has an unknown dictionary format (expected .safetensors, .pt, .pth or .npz)")
