"""Steering programs: the slot tensors (concept rows, coefficients) the op reads per sequence."""

from __future__ import annotations

import torch

from .dictionary import ConceptDictionary


def as_dictionary(dictionary) -> ConceptDictionary:
    """A ConceptDictionary as is, or one wrapping a plain (N, d) tensor of rows."""
    if isinstance(dictionary, ConceptDictionary):
        return dictionary
    if isinstance(dictionary, torch.Tensor):
        return ConceptDictionary(dictionary)
    raise TypeError(f"expected a ConceptDictionary or an (N, d) tensor, got {type(dictionary).__name__}")


def steering_program(dictionary: ConceptDictionary, concepts, factors=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot tensors ``(ids, coeffs)`` of shape (B, K) on the CPU for ``steerkern.steer_``.

    ``concepts`` is one list per sequence (``[[12], [7, 99], []]``), or one flat list shared by all
    sequences (then B = 1). Items are dictionary rows or concept texts (see
    ``ConceptDictionary.lookup``). ``factors`` mirrors ``concepts``, or is one number for every
    concept (default 1.0). coeff = factor × max_act[row], as AxBench scales its steering factors;
    empty slots hold id -1.
    """
    per_sequence = _split_per_sequence(concepts)
    if factors is None or isinstance(factors, (int, float)):
        factor_lists = [[1.0 if factors is None else float(factors)] * len(row) for row in per_sequence]
    else:
        factor_lists = _split_per_sequence(factors)
    if len(factor_lists) != len(per_sequence) or any(map(lambda c, f: len(c) != len(f), per_sequence, factor_lists)):
        raise ValueError("factors must have the same shape as concepts (one factor per concept)")
    rows = [[row_of(dictionary, item) for item in sequence] for sequence in per_sequence]
    slots = max(1, *map(len, rows)) if rows else 1
    ids = torch.full((len(rows), slots), -1, dtype=torch.long)
    coeffs = torch.zeros((len(rows), slots), dtype=torch.float32)
    max_act = dictionary.max_act.detach().float().cpu()
    for b, (sequence, sequence_factors) in enumerate(zip(rows, factor_lists)):
        for k, (row, factor) in enumerate(zip(sequence, sequence_factors)):
            ids[b, k] = row
            coeffs[b, k] = float(factor) * max_act[row]
    return ids, coeffs


def _split_per_sequence(values) -> list[list]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    values = list(values)
    if any(isinstance(item, (list, tuple, torch.Tensor)) for item in values):
        return [item.tolist() if isinstance(item, torch.Tensor) else list(item) for item in values]
    return [values]


def flat_list(concepts) -> list:
    per_sequence = _split_per_sequence(concepts)
    if len(per_sequence) != 1 or not per_sequence[0]:
        raise ValueError("detect() takes one non-empty list of concepts, read for every sequence")
    return per_sequence[0]


def row_of(dictionary: ConceptDictionary, item) -> int:
    if isinstance(item, str):
        return dictionary.lookup(item)
    if isinstance(item, bool) or not isinstance(item, int):
        raise TypeError(f"concepts are dictionary rows (ints) or concept texts, got {item!r}")
    if not 0 <= item < len(dictionary):
        raise ValueError(f"concept {item} is outside the dictionary's rows [0, {len(dictionary) - 1}]")
    return item


def fit_batch(per_sequence: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Match a per-sequence tensor to the running batch: one row is shared, and ``generate``'s
    expansion (num_return_sequences, beams) repeats each sequence in place."""
    rows = per_sequence.shape[0]
    if rows == batch:
        return per_sequence
    if batch % rows:
        raise ValueError(f"{what} describes {rows} sequences but the model runs a batch of {batch}")
    return per_sequence.repeat_interleave(batch // rows, dim=0)
