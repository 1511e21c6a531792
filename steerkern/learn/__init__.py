"""Learning concept dictionaries from labelled examples: AxBench's DiffMean and ReFT-r1.

``diffmean(model, tokenizer, data, layer=L)`` and ``reft_r1(model, tokenizer, data, layer=L)``
read AxBench's training layout (``train_data.parquet``, ``metadata.jsonl``, a DataFrame or a list
of dicts; see ``data``) and return a ``ConceptDictionary`` that saves, loads and steers as any
other. ``evaluate`` reports each concept's detection ROC AUC on held-out examples.
"""

from .data import read_training_data
from .diffmean import diffmean
from .reft_r1 import reft_r1
from .scoring import evaluate, roc_auc

__all__ = ["diffmean", "evaluate", "read_training_data", "reft_r1", "roc_auc"]
