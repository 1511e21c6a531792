"""What both methods share: checking the inputs, encoding the examples once, building the result."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dictionary import ConceptDictionary
from .data import TrainingData, read_training_data
from .encoding import Encoded, Encoder
from .forward import check_layer, model_width
from .scoring import max_acts


@dataclass
class Setup:
    data: TrainingData
    encoder: Encoder
    encoded: list[Encoded | None]  # per example, None for those no concept of this run uses
    layer: int
    width: int
    model_name: str

    def identity(self) -> dict:
        """What a checkpoint of this run must match: the model, its width, the layer, the data."""
        return {"model": self.model_name, "width": self.width, "layer": self.layer, "data": self.data.source}


def prepare(model, tokenizer, data, layer) -> Setup:
    """Bad input fails here, before any forward pass: the layer, the data, the tokenizer."""
    layer = check_layer(model, layer)
    width = model_width(model)
    data = read_training_data(data)
    encoder = Encoder(tokenizer)
    used = sorted({index for concept in data.concepts for index in concept.examples})
    encoded: list[Encoded | None] = [None] * len(data.examples)
    for index in used:
        encoded[index] = encoder.encode(data.examples[index])
    return Setup(data, encoder, encoded, layer, width, _model_name(model))


def _model_name(model) -> str:
    return getattr(model.config, "_name_or_path", None) or type(model).__name__


def finish(model, setup: Setup, rows: torch.Tensor, method: str, hyperparameters: dict, batch_size: int) -> ConceptDictionary:
    """The learned rows with ``max_act``, the concepts' texts and genres, and the run's provenance."""
    rows = rows.detach().float().cpu()
    max_act = max_acts(model, setup.encoder, setup.layer, rows, setup.data, setup.encoded, batch_size)
    provenance = {
        "model_name": setup.model_name,
        "layer": setup.layer,
        "component": "res",
        "method": method,
        "source": "steerkern.learn",
        "data": setup.data.source,
        "hyperparameters": hyperparameters,
        "prefix_length": setup.encoder.prefix_length,
    }
    return ConceptDictionary(rows, max_act=max_act, concepts=[c.record() for c in setup.data.concepts], provenance=provenance)
