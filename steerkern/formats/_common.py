"""File helpers shared by the format readers: every error names the file it is about."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import NoReturn

import torch

_LAYER_FOLDER = re.compile(r"^(?:l|layer_)(\d+)$")


def fail(path, message: str) -> NoReturn:
    raise ValueError(f"{path}: {message}")


def require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")


def read_json(path: Path):
    require_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        fail(path, f"is not valid JSON ({error})")


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """Return ``(line number, record)`` for each non-blank line."""
    require_file(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        fail(path, f"is not UTF-8 text ({error})")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            fail(path, f"line {number} is not valid JSON ({error.msg})")
        if not isinstance(record, dict):
            fail(path, f"line {number} is not a JSON object")
        records.append((number, record))
    return records


def load_torch_file(path: Path):
    """``torch.load`` without running pickled code; zip-format files are mapped, not read."""
    require_file(path)
    # Only torch.save's zip format can be memory-mapped; the legacy format is read in full.
    mappable = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        fail(path, f"cannot be read as a PyTorch file; is it truncated or corrupted? ({error})")


def float_tensor(path: Path, name: str, value, dims: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        fail(path, f"{name} must be a floating-point tensor, got {getattr(value, 'dtype', type(value).__name__)}")
    if value.dim() != dims:
        fail(path, f"{name} must be {dims}-D, got shape {tuple(value.shape)}")
    return value


def layer_from_path(file: Path) -> int | None:
    """The layer named by a folder above ``file`` such as ``l20/`` (AxBench) or ``layer_20/`` (GemmaScope)."""
    # GemmaScope nests three folders deep: layer_20/width_16k/average_l0_71/params.npz.
    for part in reversed(file.parts[-4:-1]):
        match = _LAYER_FOLDER.match(part)
        if match:
            return int(match.group(1))
    return None
