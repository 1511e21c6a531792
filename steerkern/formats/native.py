"""steerkern's own format: one ``.safetensors`` file, tensors plus JSON metadata in its header.

Tensors: ``weight [N, d]`` and, when present, ``bias``, ``max_act``, ``thresholds``, ``encoder [d, N]``,
``b_enc``, ``threshold`` and ``b_dec``. Header metadata (strings, as safetensors requires):
``format`` = "steerkern.dictionary", ``format_version``, ``concepts`` and ``provenance`` as JSON.
Reading maps the file: rows are paged in from disk only when touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import gemmascope
from ._common import fail, require_file

FORMAT = "steerkern.dictionary"
VERSION = 1
TENSORS = ("weight", "bias", "max_act", "thresholds", "encoder", "b_enc", "threshold", "b_dec")


def write(path: Path, tensors: dict, concepts: list[dict], provenance: dict) -> None:
    header = {
        "format": FORMAT,
        "format_version": str(VERSION),
        "concepts": json.dumps(concepts, ensure_ascii=False),
        "provenance": json.dumps(provenance, ensure_ascii=False, default=str),
    }
    payload = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items() if tensor is not None}
    # Written beside the target, then renamed: a failed save leaves no truncated file, and a
    # dictionary mapped from `path` itself keeps reading the old bytes while the new ones are written.
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(payload, partial, metadata=header)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read(path: Path) -> dict:
    """Constructor arguments of a steerkern file, or of an SAE stored under GemmaScope's tensor names."""
    require_file(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            header = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except SafetensorError as error:
        fail(path, f"cannot be read as a safetensors file; is it truncated or corrupted? ({error})")
    if header.get("format") == FORMAT:
        return _steerkern_parts(path, header, tensors)
    if "W_dec" in tensors:  # SAEs published as safetensors (SAELens, GemmaScope ports) use these names
        parts = gemmascope.sae_parts(path, tensors)
        parts["provenance"] = {"method": "SAE", "source": str(path), "format": "sae-safetensors"}
        return parts
    fail(path, "is neither a steerkern dictionary (no steerkern metadata) nor an SAE (no W_dec tensor)")


def _steerkern_parts(path: Path, header: dict, tensors: dict) -> dict:
    version = header.get("format_version", "")
    if not version.isdigit():
        fail(path, f"has an invalid format_version {version!r}")
    if int(version) > VERSION:
        fail(path, f"was written by a newer steerkern (format version {version}; this one reads up to {VERSION})")
    unknown = sorted(set(tensors) - set(TENSORS))
    if unknown:
        fail(path, f"holds tensors steerkern does not know: {', '.join(unknown)}")
    if "weight" not in tensors:
        fail(path, "has no weight tensor")
    provenance = _json_field(path, header, "provenance", dict)
    provenance.update(source=str(path), format="steerkern")
    return {**tensors, "concepts": _json_field(path, header, "concepts", list), "provenance": provenance}


def _json_field(path: Path, header: dict, name: str, kind: type):
    try:
        value = json.loads(header.get(name, ""))
    except json.JSONDecodeError as error:
        fail(path, f"has unreadable {name} metadata ({error.msg})")
    if not isinstance(value, kind):
        fail(path, f"{name} metadata must be a JSON {kind.__name__}")
    return value
