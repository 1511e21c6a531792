"""steerkern: fused concept steering and detection for language models."""

from ._backend import build_info
from .conditions import Condition, all_of, any_of
from .dictionary import ConceptDictionary
from .functional import steer
from .hooks import DetectionHooks, Readout, Steerer, SteeringHooks
from .models import find_decoder_layers
from .ops import detect, steer_

__version__ = "0.1.0"

__all__ = [
    "ConceptDictionary",
    "Condition",
    "DetectionHooks",
    "Readout",
    "Steerer",
    "SteeringHooks",
    "__version__",
    "all_of",
    "any_of",
    "build_info",
    "detect",
    "find_decoder_layers",
    "steer",
    "steer_",
]
