"""Dictionary files in the layouts their producers release, written by tests instead of downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CONCEPTS = [
    ("derivatives and rates of change in calculus", ["math"]),
    ("references to wedding ceremonies", ["text"]),
    ("Python function definitions", ["code"]),
    ("the derivative", ["math"]),
    ("legal case citations", ["text"]),
    ("C++ template syntax", ["code"]),
    ("Wedding", ["text"]),
]


def random_rows(rows: int, width: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=generator).to(dtype)


def random_sae(rows: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """GemmaScope's tensor names and shapes: W_dec [N, d], W_enc [d, N], b_enc/threshold [N], b_dec [d]."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "W_dec": torch.randn(rows, width, generator=generator),
        "W_enc": torch.randn(width, rows, generator=generator),
        "b_enc": torch.randn(rows, generator=generator),
        "threshold": torch.rand(rows, generator=generator) + 0.1,
        "b_dec": torch.randn(width, generator=generator),
    }


def metadata_lines(concepts=CONCEPTS) -> list[dict]:
    """AxBench metadata.jsonl records, one per row."""
    return [
        {
            "concept_id": concept_id,
            "concept": text,
            "ref": f"https://www.neuronpedia.org/gemma-2-2b/20-gemmascope-res-16k/{1000 + concept_id}",
            "concept_genres_map": {text: genres},
        }
        for concept_id, (text, genres) in enumerate(concepts)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_axbench_release(root: Path, weight: torch.Tensor, *, layer: int = 20, acts: dict | None = None) -> Path:
    """The Hub layout of pyvene/gemma-reft-r1-2b-it-res: l20/weight.pt, metadata.jsonl, acts.json."""
    folder = root / f"l{layer}"
    folder.mkdir(parents=True)
    torch.save(weight, folder / "weight.pt")
    write_jsonl(folder / "metadata.jsonl", metadata_lines(CONCEPTS[: weight.shape[0]]))
    if acts is not None:
        (folder / "acts.json").write_text(json.dumps(acts), encoding="utf-8")
    return folder


def write_axbench_run(run: Path, methods: dict[str, tuple[torch.Tensor, torch.Tensor]], sae=None) -> Path:
    """What axbench/scripts/train.py leaves: train/<Method>_weight.pt, _bias.pt, config.json, GemmaScopeSAE.pt,
    with the concepts in generate/metadata.jsonl."""
    train, generate = run / "train", run / "generate"
    train.mkdir(parents=True)
    generate.mkdir()
    rows = next(iter(methods.values()))[0].shape[0]
    for method, (weight, bias) in methods.items():
        torch.save(weight, train / f"{method}_weight.pt")
        torch.save(bias, train / f"{method}_bias.pt")
    if sae is not None:
        torch.save(sae, train / "GemmaScopeSAE.pt")
    config = {"model_name": "google/gemma-2-2b-it", "layer": 20, "component": "res"}
    (train / "config.json").write_text(json.dumps(config), encoding="utf-8")
    write_jsonl(generate / "metadata.jsonl", metadata_lines(CONCEPTS[:rows]))
    return train


def write_params_npz(root: Path, sae: dict[str, torch.Tensor], layer: int = 20) -> Path:
    """GemmaScope's layout: layer_20/width_16k/average_l0_71/params.npz."""
    folder = root / f"layer_{layer}" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    path = folder / "params.npz"
    np.savez(path, **{name: tensor.numpy() for name, tensor in sae.items()})
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
