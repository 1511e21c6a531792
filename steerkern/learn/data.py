"""Training data in AxBench's layout: ``train_data.parquet`` rows and ``metadata.jsonl`` concepts.

A row is one example: ``input`` (the instruction), ``output`` (the response), ``output_concept``
(the concept text), ``concept_genre``, ``category`` ("positive" or "negative") and ``concept_id``
(-1 for negatives). As AxBench trains, a concept's examples are its positives followed by the
negatives of its genre (negatives are shared by every concept of that genre). The genre is the
first of the concept's ``concept_genres_map`` in ``metadata.jsonl`` when there is one, else the
``concept_genre`` of its positives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

COLUMNS = ("input", "output", "output_concept", "concept_genre", "category", "concept_id")
CATEGORIES = ("positive", "negative")
TRAIN_FILE, METADATA_FILE = "train_data.parquet", "metadata.jsonl"


@dataclass(frozen=True)
class Example:
    instruction: str
    response: str | None  # None: AxBench trains the end-of-sequence token alone


@dataclass(frozen=True)
class Concept:
    """One concept to learn: its examples are indices into ``TrainingData.examples``."""

    concept_id: int
    text: str
    genre: str
    ref: str | None
    positives: tuple[int, ...]
    negatives: tuple[int, ...]

    @property
    def examples(self) -> tuple[int, ...]:
        return self.positives + self.negatives

    def record(self) -> dict:
        """The concept as ``ConceptDictionary`` stores it."""
        return {"concept_id": self.concept_id, "concept": self.text, "ref": self.ref, "genres": [self.genre]}


@dataclass(frozen=True)
class TrainingData:
    examples: list[Example]
    concepts: list[Concept]  # sorted by concept_id: row i of the learned dictionary
    source: str

    def subset(self, concepts) -> TrainingData:
        return TrainingData(self.examples, list(concepts), self.source)


def read_training_data(data) -> TrainingData:
    """Read a ``train_data.parquet`` file, a ``metadata.jsonl`` file or a folder holding them, a
    pandas DataFrame, or a list of dicts with AxBench's columns (data already read passes as is)."""
    if isinstance(data, TrainingData):
        return data
    metadata, source = None, type(data).__name__
    if isinstance(data, (str, Path)):
        frame, metadata, source = _read_files(Path(data).expanduser())
    elif isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, (list, tuple)):
        if not all(isinstance(row, dict) for row in data):
            raise ValueError("a list of training examples must hold dicts with the columns " + ", ".join(COLUMNS))
        frame = pd.DataFrame(list(data), columns=None if data else list(COLUMNS))
    else:
        raise ValueError(f"training data must be a path, a DataFrame or a list of dicts, got {type(data).__name__}")
    try:
        return _training_data(frame, metadata, source)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _read_files(path: Path):
    if path.is_dir():
        folder, train = path, path / TRAIN_FILE
    elif path.suffix == ".jsonl":
        folder, train = path.parent, path.parent / TRAIN_FILE
    else:
        folder, train = path.parent, path
    if not train.is_file():
        raise FileNotFoundError(f"{train}: no such file (AxBench's training examples)")
    metadata_file = path if path.suffix == ".jsonl" else folder / METADATA_FILE
    metadata = _read_metadata(metadata_file) if metadata_file.is_file() else None
    try:
        frame = pd.read_parquet(train)
    except Exception as error:  # pyarrow raises its own types for a file that is not parquet
        raise ValueError(f"{train}: cannot read it as parquet ({error})") from None
    return frame, metadata, str(train)


def _read_metadata(path: Path) -> dict[int, dict]:
    records = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[int(record["concept_id"])] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{number}: expected a JSON object with a concept_id") from None
    return records


def _training_data(frame: pd.DataFrame, metadata, source) -> TrainingData:
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"missing columns {', '.join(missing)} (AxBench's layout has {', '.join(COLUMNS)})")
    unknown = sorted(set(frame["category"]) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"category holds {unknown}; expected 'positive' or 'negative'")
    frame = frame.reset_index(drop=True)
    examples = [Example(str(i), _response(o)) for i, o in zip(frame["input"], frame["output"])]
    ids = frame["concept_id"].astype(int)
    positive = frame["category"] == "positive"
    if (ids[positive] < 0).any():
        raise ValueError("a positive example has concept_id -1; positives name their concept's id")
    negative = (frame["category"] == "negative") & (ids < 0)
    negatives_by_genre = frame[negative].groupby("concept_genre").groups

    concept_ids = sorted(set(ids[positive]) | set(metadata or ()))
    concepts = []
    for concept_id in concept_ids:
        rows = frame.index[positive & (ids == concept_id)]
        meta = (metadata or {}).get(concept_id, {})
        text = meta.get("concept") or (str(frame.at[rows[0], "output_concept"]) if len(rows) else f"concept {concept_id}")
        if not len(rows):
            raise ValueError(f"concept {concept_id} ({text!r}) has no positive examples")
        genres = (meta.get("concept_genres_map") or {}).get(text) or [str(frame.at[rows[0], "concept_genre"])]
        negatives = negatives_by_genre.get(genres[0], [])
        if not len(negatives):
            raise ValueError(f"concept {concept_id} ({text!r}) has no negative examples of its genre {genres[0]!r}")
        concepts.append(Concept(int(concept_id), text, genres[0], meta.get("ref"), tuple(rows), tuple(negatives)))
    if not concepts:
        raise ValueError("no concepts: no row has category 'positive'")
    return TrainingData(examples, concepts, source)


def _response(output) -> str | None:
    """AxBench trains a missing response (NaN) as the end-of-sequence token alone."""
    return None if output is None or (isinstance(output, float) and output != output) else str(output)
