"""What an engine steers with: the dictionary of each steered layer, the slots per request, and
whether clamp programs are served. One JSON value in the ``STEERKERN_VLLM`` environment variable
carries it to every process vLLM starts (front end, engine core, workers); without it the plugin
does nothing.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..dictionary import ConceptDictionary

ENV = "STEERKERN_VLLM"


@dataclass(frozen=True)
class SteeringConfig:
    """``dictionaries``: decoder layer (negative ones count from the end) -> dictionary source.
    ``max_concepts``: K, the slots of a request's program. ``clamp``: serve clamp programs too;
    their layers steer the summed residual stream, add-only engines add into the layer output."""

    dictionaries: dict[int, str]
    max_concepts: int = 4
    clamp: bool = True

    def __post_init__(self):
        if not self.dictionaries:
            raise ValueError("steerkern: at least one steered layer is needed")
        for layer in self.dictionaries:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ValueError(f"steerkern: layers are ints, got {layer!r}")
        if isinstance(self.max_concepts, bool) or not isinstance(self.max_concepts, int) or self.max_concepts < 1:
            raise ValueError(f"steerkern: max_concepts must be an int >= 1, got {self.max_concepts!r}")

    @property
    def sources(self) -> list[str]:
        """The distinct dictionary sources, in layer order: one program table each."""
        return list(dict.fromkeys(self.dictionaries.values()))

    def to_env(self) -> str:
        return json.dumps({"dictionaries": {str(k): v for k, v in self.dictionaries.items()},
                           "max_concepts": self.max_concepts, "clamp": self.clamp})

    @classmethod
    def from_env(cls) -> SteeringConfig | None:
        text = os.environ.get(ENV)
        if not text:
            return None
        value = json.loads(text)
        return cls({int(k): v for k, v in value["dictionaries"].items()}, value["max_concepts"], value["clamp"])


def build_config(dictionary, layers=None, *, max_concepts=4, clamp=True) -> SteeringConfig:
    """``dictionary``: one source for every layer in ``layers``, or ``{layer: source}``."""
    if isinstance(dictionary, dict):
        if layers is not None and sorted(layers) != sorted(dictionary):
            raise ValueError("steerkern: with a {layer: dictionary} mapping, layers may be omitted or must match it")
        per_layer = {layer: str(source) for layer, source in dictionary.items()}
    else:
        if layers is None:
            raise ValueError("steerkern: layers is needed unless dictionary is a {layer: dictionary} mapping")
        per_layer = {layer: str(dictionary) for layer in ([layers] if isinstance(layers, int) else layers)}
    config = SteeringConfig(per_layer, max_concepts, clamp)
    for source in config.sources:
        load_dictionary(source)  # an unreadable file fails here, named, not at the first request
    return config


@functools.lru_cache(maxsize=None)
def load_dictionary(source: str) -> ConceptDictionary:
    """A dictionary read once per process (steerkern's .safetensors files are memory-mapped)."""
    try:
        return ConceptDictionary.load(source)
    except (OSError, KeyError, ValueError) as error:
        where = source if Path(source).exists() else f"{source} (no such file or folder)"
        raise ValueError(f"steerkern: cannot read the dictionary {where}: {error}") from error
