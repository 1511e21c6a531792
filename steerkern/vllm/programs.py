"""A request's steering program in the flat form vLLM carries per request.

``SamplingParams.extra_args`` (and ``vllm_xargs`` over HTTP) hold only strings, numbers and flat
lists of them, so a program is five keys: ``steerkern_concepts`` (dictionary rows or concept
texts), ``steerkern_factors`` (one per concept), ``steerkern_mode``, ``steerkern_positions`` and
``steerkern_prefix_length``. The semantics are the Hugging Face hooks' (``Steerer.steer``):
α = factor × max_act, add or clamp, positions all / prompt / generation, a prefix left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import torch

from ..dictionary import ConceptDictionary
from ..hooks import POSITIONS, STEERING_MODES
from ..programs import steering_program

PREFIX = "steerkern_"
CONCEPTS, FACTORS, MODE = f"{PREFIX}concepts", f"{PREFIX}factors", f"{PREFIX}mode"
POSITIONS_KEY, PREFIX_LENGTH = f"{PREFIX}positions", f"{PREFIX}prefix_length"
KEYS = (CONCEPTS, FACTORS, MODE, POSITIONS_KEY, PREFIX_LENGTH)


@dataclass(frozen=True)
class Program:
    concepts: tuple
    factors: tuple[float, ...]
    mode: str = "add"
    positions: str = "all"
    prefix_length: int = 0

    def __post_init__(self):
        if not self.concepts:
            raise ValueError("steerkern: a program needs at least one concept")
        for item in self.concepts:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(f"steerkern: concepts are dictionary rows (ints) or concept texts, got {item!r}")
        if len(self.factors) != len(self.concepts):
            raise ValueError(
                f"steerkern: {len(self.concepts)} concepts but {len(self.factors)} factors (one factor per concept)"
            )
        for factor in self.factors:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
                raise ValueError(f"steerkern: factors must be finite numbers, got {factor!r}")
        if self.mode not in STEERING_MODES:
            raise ValueError(f"steerkern: mode must be one of {STEERING_MODES}, got {self.mode!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"steerkern: positions must be one of {POSITIONS}, got {self.positions!r}")
        if isinstance(self.prefix_length, bool) or not isinstance(self.prefix_length, int) or self.prefix_length < 0:
            raise ValueError(f"steerkern: prefix_length must be an int >= 0, got {self.prefix_length!r}")

    def extra_args(self) -> dict:
        return {CONCEPTS: list(self.concepts), FACTORS: [float(f) for f in self.factors], MODE: self.mode,
                POSITIONS_KEY: self.positions, PREFIX_LENGTH: self.prefix_length}

    def slots(self, dictionary: ConceptDictionary, max_concepts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, coeffs), each (K,), for one dictionary: rows resolved, α = factor × max_act, -1 padded."""
        if len(self.concepts) > max_concepts:
            raise ValueError(
                f"steerkern: {len(self.concepts)} concepts, more than the engine's max_concepts={max_concepts}"
            )
        try:
            ids, coeffs = steering_program(dictionary, [list(self.concepts)], [list(self.factors)])
        except (KeyError, TypeError) as error:
            raise ValueError(f"steerkern: {error.args[0] if error.args else error}") from None
        padded_ids = torch.full((max_concepts,), -1, dtype=torch.long)
        padded_coeffs = torch.zeros(max_concepts, dtype=torch.float32)
        padded_ids[: ids.shape[1]], padded_coeffs[: ids.shape[1]] = ids[0], coeffs[0]
        return padded_ids, padded_coeffs

    def cache_salt(self) -> str:
        """Equal for equal programs only: KV computed under one program is never reused by another."""
        text = json.dumps(self.extra_args(), sort_keys=True)
        return "steerkern:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def program(concepts, factors=None, *, mode="add", positions="all", prefix_length=0) -> dict:
    """The ``extra_args`` (or ``vllm_xargs``) that steer one request.

    ``concepts``: a dictionary row or concept text, or a list of them (at most the engine's
    max_concepts); ``factors``: one number per concept, or one for all (default 1.0).
    """
    concepts = list(concepts) if isinstance(concepts, (list, tuple)) else [concepts]
    if factors is None or (isinstance(factors, (int, float)) and not isinstance(factors, bool)):
        factors = [1.0 if factors is None else factors] * len(concepts)
    factors = list(factors) if isinstance(factors, (list, tuple)) else [factors]
    return Program(tuple(concepts), tuple(factors), mode, positions, prefix_length).extra_args()


def parse(extra_args) -> Program | None:
    """The program in ``extra_args``, or None for an unsteered request; ValueError if malformed."""
    if not extra_args:
        return None
    given = {key: value for key, value in extra_args.items() if key.startswith(PREFIX)}
    if not given:
        return None
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ValueError(f"steerkern: unknown program keys {unknown} (known: {list(KEYS)})")
    if CONCEPTS not in given:
        raise ValueError(f"steerkern: a program needs {CONCEPTS}")
    concepts = given[CONCEPTS]
    concepts = tuple(concepts) if isinstance(concepts, (list, tuple)) else (concepts,)
    factors = given.get(FACTORS, [1.0] * len(concepts))
    factors = tuple(factors) if isinstance(factors, (list, tuple)) else (factors,)
    return Program(concepts, factors, given.get(MODE, "add"), given.get(POSITIONS_KEY, "all"),
                   given.get(PREFIX_LENGTH, 0))
