"""steerkern: fused concept steering and detection for language models."""

from ._backend import build_info
from .dictionary import ConceptDictionary
from .ops import detect, steer_

__version__ = "0.1.0"

__all__ = ["ConceptDictionary", "__version__", "build_info", "detect", "steer_"]
