"""Sentence scores of learned rows: ``max_act`` per concept and detection ROC AUC.

A sentence's score for a concept is the max of ``ReLU(h_t · w)`` over its positions after the
prefix, as AxBench's ``predict_latent`` reads it. ``max_act`` is the largest score over the
concept's positives; AxBench uses 50 where that is not positive. The ROC AUC compares the scores
of a concept's positives with those of its negatives, as AxBench's ``AUCROCEvaluator`` does (its
min-max normalisation does not change the ranking, so it is left out).
"""

from __future__ import annotations

import torch

from ..ops import detect
from .data import read_training_data
from .encoding import Encoder
from .forward import check_layer, model_device, model_width, read_layer

MAX_ACT_FALLBACK = 50.0  # AxBench's max_act for a concept whose largest activation is not positive


@torch.no_grad()
def score_examples(model, encoder, layer, rows, encoded, columns, batch_size=32) -> list[torch.Tensor]:
    """For each encoded example, its sentence scores against the rows ``columns[i]`` names."""
    device = model_device(model)
    rows = rows.to(device=device, dtype=torch.float32)
    scores = []
    for start in range(0, len(encoded), batch_size):
        batch = encoder.collate(encoded[start : start + batch_size], device)
        hidden = read_layer(model, layer, batch)
        sentence = detect(hidden, rows.to(hidden.dtype), mask=batch.positions, reduce="max").cpu()
        scores += [sentence[i, columns[start + i]] for i in range(sentence.shape[0])]
    return scores


def max_acts(model, encoder, layer, rows, data, encoded, batch_size=32) -> torch.Tensor:
    """Per concept (row i = ``data.concepts[i]``), the largest sentence score over its positives."""
    examples = [(index, row) for row, concept in enumerate(data.concepts) for index in concept.positives]
    scores = score_examples(model, encoder, layer, rows, [encoded[i] for i, _ in examples], [[row] for _, row in examples], batch_size)
    best = torch.full((len(data.concepts),), -torch.inf)
    for (_, row), score in zip(examples, scores):
        best[row] = torch.maximum(best[row], score[0])
    return torch.where(best > 0, best, torch.tensor(MAX_ACT_FALLBACK))


def roc_auc(positive_scores, negative_scores) -> float:
    """The probability that a positive outscores a negative (ties count half): the ROC curve's area."""
    positive = torch.as_tensor(positive_scores, dtype=torch.float64)[:, None]
    negative = torch.as_tensor(negative_scores, dtype=torch.float64)[None, :]
    if not positive.numel() or not negative.numel():
        raise ValueError("ROC AUC needs at least one positive and one negative example")
    return float(((positive > negative).double() + 0.5 * (positive == negative).double()).mean())


def evaluate(model, tokenizer, dictionary, data, layer: int, batch_size=32) -> dict[int, float]:
    """ROC AUC per concept id of ``data`` (held-out examples in the training layout), each concept
    read with its row of ``dictionary``."""
    layer = check_layer(model, layer)
    data = read_training_data(data)
    dictionary.check_hidden_size(model_width(model))
    encoder = Encoder(tokenizer)
    rows_of = [dictionary.lookup(concept.concept_id) for concept in data.concepts]
    wanted = [[] for _ in data.examples]
    for row, concept in zip(rows_of, data.concepts):
        for index in concept.examples:
            wanted[index].append(row)
    used = [index for index, rows in enumerate(wanted) if rows]
    encoded = [encoder.encode(data.examples[index]) for index in used]
    scores = score_examples(model, encoder, layer, dictionary.weight, encoded, [wanted[i] for i in used], batch_size)
    by_pair = {(index, row): float(value) for index, values in zip(used, scores) for row, value in zip(wanted[index], values.tolist())}
    return {
        concept.concept_id: roc_auc([by_pair[i, row] for i in concept.positives], [by_pair[i, row] for i in concept.negatives])
        for row, concept in zip(rows_of, data.concepts)
    }
