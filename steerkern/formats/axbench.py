"""AxBench dictionaries (stanfordnlp/axbench): released folders and training output.

Released, e.g. the Hub repo ``pyvene/gemma-reft-r1-2b-it-res``::

    l20/weight.pt         [N, d] ReFT-r1 rows
    l20/metadata.jsonl    line i: {"concept_id": i, "concept", "ref", "concept_genres_map": {concept: [genres]}}
    l20/acts.json         {"max_act": {"<id>": v}, "thresholds": {"<id>": v}}   (optional)

Written by ``axbench/scripts/train.py``::

    <run>/train/<Method>_weight.pt, <Method>_bias.pt   e.g. LsReFT_weight.pt [N, d], LsReFT_bias.pt [N]
    <run>/train/GemmaScopeSAE.pt                       the GemmaScope SAE pruned to the same N concepts
    <run>/train/config.json                            {"model_name", "layer", "component"}
    <run>/generate/metadata.jsonl
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import gemmascope
from ._common import fail, float_tensor, layer_from_path, load_torch_file, read_json, read_jsonl

PRUNED_SAE_FILE = "GemmaScopeSAE.pt"


def is_weight_file(path: Path) -> bool:
    return path.name == "weight.pt" or path.name.endswith("_weight.pt")


def read_weights(path: Path, weight) -> dict:
    """Constructor arguments for an AxBench weight file and the files beside it."""
    weight = float_tensor(path, "the weight", weight, 2)
    rows = weight.shape[0]
    metadata = metadata_file(path.parent)
    if metadata is None:
        raise FileNotFoundError(
            f"{path.parent / 'metadata.jsonl'}: file not found; AxBench weights need the metadata.jsonl "
            f"naming their concepts (looked beside {path.name} and in ../generate/)"
        )
    max_act, thresholds = read_acts(path.parent / "acts.json", rows)
    method = path.name.removesuffix("_weight.pt") if path.name.endswith("_weight.pt") else None
    return {
        "weight": weight,
        "bias": read_bias(path, rows),
        "max_act": max_act,
        "thresholds": thresholds,
        "concepts": read_concepts(metadata, rows, path),
        "provenance": provenance(path, method=method, file_format="axbench"),
    }


def read_pruned_sae(path: Path, tensors) -> dict:
    """Constructor arguments for ``GemmaScopeSAE.pt``, named by a metadata.jsonl when one is beside it."""
    parts = gemmascope.sae_parts(path, tensors)
    metadata = metadata_file(path.parent)
    if metadata is not None:
        parts["concepts"] = read_concepts(metadata, parts["weight"].shape[0], path)
    parts["provenance"] = provenance(path, method="GemmaScopeSAE", file_format="gemmascope-pt")
    return parts


def metadata_file(folder: Path) -> Path | None:
    # train.py writes weights to <run>/train/ and keeps the concepts in <run>/generate/.
    for candidate in (folder / "metadata.jsonl", folder.parent / "generate" / "metadata.jsonl"):
        if candidate.is_file():
            return candidate
    return None


def read_bias(weight_path: Path, rows: int) -> torch.Tensor | None:
    if not is_weight_file(weight_path):
        return None
    bias_path = weight_path.with_name(weight_path.name.removesuffix("weight.pt") + "bias.pt")
    if not bias_path.exists():
        return None
    bias = float_tensor(bias_path, "the bias", load_torch_file(bias_path), 1)
    if bias.shape[0] != rows:
        fail(bias_path, f"holds {bias.shape[0]} biases but {weight_path.name} has {rows} rows")
    return bias


def read_concepts(path: Path, rows: int, weight_path: Path) -> list[dict]:
    records = read_jsonl(path)
    if len(records) != rows:
        fail(path, f"describes {len(records)} concepts but {weight_path.name} has {rows} rows")
    return [_concept(path, row, number, record) for row, (number, record) in enumerate(records)]


def _concept(path: Path, row: int, line: int, record: dict) -> dict:
    concept_id = record.get("concept_id", row)
    if type(concept_id) is not int or concept_id != row:
        fail(path, f"line {line} has concept_id {concept_id!r} but describes row {row} (AxBench rows are concept ids)")
    text = record.get("concept")
    if not isinstance(text, str):
        fail(path, f"line {line} has no concept text")
    genres_map = record.get("concept_genres_map")
    genres = genres_map.get(text) if isinstance(genres_map, dict) else None
    return {
        "concept_id": concept_id,
        "concept": text,
        "ref": record.get("ref"),
        "genres": [str(genre) for genre in genres] if isinstance(genres, list) else [],
    }


def read_acts(path: Path, rows: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """max_act and detection thresholds per row; ids acts.json leaves out get 1.0 and NaN."""
    if not path.exists():
        return None, None
    acts = read_json(path)
    if not isinstance(acts, dict):
        fail(path, 'must be a JSON object {"max_act": {...}, "thresholds": {...}}')
    max_act = _per_concept(path, acts, "max_act", rows, fill=1.0)
    thresholds = _per_concept(path, acts, "thresholds", rows, fill=float("nan")) if acts.get("thresholds") else None
    return max_act, thresholds


def _per_concept(path: Path, acts: dict, key: str, rows: int, fill: float) -> torch.Tensor:
    entries = acts.get(key, {})
    if not isinstance(entries, dict):
        fail(path, f'{key} must map concept ids to numbers, like {{"0": 1.5}}')
    values = [fill] * rows
    for concept_id, value in entries.items():
        try:
            row, number = int(concept_id), float(value)
        except (TypeError, ValueError):
            fail(path, f"{key} entry {concept_id!r}: {value!r} is not a concept id with a number")
        if not 0 <= row < rows:
            fail(path, f"{key} names concept {row} but the dictionary has {rows} rows")
        values[row] = number
    return torch.tensor(values, dtype=torch.float32)


def provenance(path: Path, *, method: str | None, file_format: str) -> dict:
    config_path = path.parent / "config.json"
    config = read_json(config_path) if config_path.exists() else {}
    if not isinstance(config, dict):
        fail(config_path, 'must be a JSON object {"model_name", "layer", "component"}')
    return {
        "model_name": config.get("model_name"),
        "layer": config.get("layer", layer_from_path(path)),
        "component": config.get("component"),
        "method": method,
        "source": str(path),
        "format": file_format,
    }
