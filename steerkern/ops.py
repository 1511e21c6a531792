"""Public functional ops: validate arguments, then run the compiled kernels or the reference.

``torch.ops.steerkern.steer_`` and ``torch.ops.steerkern.detect`` are defined once in C++
(csrc/bindings.cpp); this module adds their fake kernels (for torch.compile and meta tensors) and
the argument checks that give a clear error before anything is written.
"""

from __future__ import annotations

import torch

from . import reference
from ._backend import use_compiled
from .validation import check_detect_args, check_steer_args

_REDUCE = ("none", "max")


def steer_(hidden, dictionary, concept_ids, coeffs, *, mode="add", mask=None, bias=None, check_ids=True):
    """Steer ``hidden`` in place and return the pre-steering activations of the chosen concepts.

    ``hidden`` (B, S, d) or (T, d); ``dictionary`` (N, d); ``concept_ids``/``coeffs`` (B, K) per
    sequence or (B, S, K)/(T, K) per row, -1 = empty slot; ``mode`` "add" | "clamp" | "detect";
    ``mask`` (B, S)/(T,) rows to steer; ``bias`` (N,). Returns float32 acts, one per row and slot.
    ``check_ids=False`` skips the id range check (a host sync on CUDA); out-of-range ids then
    count as empty slots.
    """
    ids, alpha, mask = check_steer_args(hidden, dictionary, concept_ids, coeffs, mode, mask, bias, check_ids)
    if use_compiled():
        return torch.ops.steerkern.steer_(hidden, dictionary, ids, alpha, mode, mask, bias)
    steered, acts = reference.steer(hidden, dictionary, ids, alpha, mode=mode, mask=mask, bias=bias)
    if mode != "detect":
        hidden.copy_(steered)
    return acts


def detect(hidden, dictionary, *, bias=None, threshold=None, encoder=None, mask=None, reduce="none"):
    """Dense detection over all N concepts (see ``reference.detect`` for the math)."""
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    weight, is_encoder, mask = check_detect_args(hidden, dictionary, bias, threshold, encoder, mask)
    if use_compiled():
        return torch.ops.steerkern.detect(hidden, weight, is_encoder, bias, threshold, mask, reduce == "max")
    return reference.detect(
        hidden, dictionary, bias=bias, threshold=threshold, encoder=encoder, mask=mask, reduce=reduce
    )
