"""Public functional ops: validate arguments, then run the compiled kernels or the reference.

``torch.ops.steerkern.steer_`` and ``torch.ops.steerkern.detect`` are defined once in C++
(csrc/bindings.cpp); this module adds their fake kernels (for torch.compile and meta tensors) and
the argument checks that give a clear error before anything is written.
"""

from __future__ import annotations

import torch

from . import reference
from ._backend import load_compiled, use_compiled
from .validation import check_detect_args, check_gate_args, check_steer_args, check_stream_args

_REDUCE = ("none", "max")


def steer_(hidden, dictionary, concept_ids, coeffs, *, mode="add", mask=None, bias=None, gate_bounds=None,
           gate_all=None, residual=None, clamped=None, check_ids=True):
    """Steer ``hidden`` in place and return the pre-steering activations of the chosen concepts.

    ``hidden`` (B, S, d) or (T, d); ``dictionary`` (N, d); ``concept_ids``/``coeffs`` (B, K) per
    sequence or (B, S, K)/(T, K) per row, -1 = empty slot; ``mode`` "add" | "clamp" | "detect";
    ``mask`` (B, S)/(T,) rows to steer; ``bias`` (N,). ``gate_bounds`` (..., K, 2) turns slots
    into gates (see ``reference.steer``): a row is then written only where its gate passes, read
    once either way. ``residual`` (hidden's shape): the activations are those of the stream
    ``hidden + residual`` and the update goes to hidden alone (a layer that returns its output and
    the residual apart, as vLLM's do). ``clamped`` (one bool per program, mode clamp): the programs
    that clamp; the others add. Returns float32 acts, one per row and slot (gate slots included).
    ``check_ids=False`` skips the id range check (a host sync on CUDA, skipped anyway under
    torch.compile); out-of-range ids then count as empty slots.
    """
    check_ids = check_ids and not torch.compiler.is_compiling()
    ids, alpha, mask = check_steer_args(hidden, dictionary, concept_ids, coeffs, mode, mask, bias, check_ids)
    gate_bounds, gate_all = check_gate_args(hidden, concept_ids, gate_bounds, gate_all)
    residual, clamped = check_stream_args(hidden, concept_ids, mode, residual, clamped)
    if not hidden.is_contiguous():  # the kernels write rows in place: work on a copy, write it back
        work = hidden.contiguous()
        acts = steer_(work, dictionary, ids, alpha, mode=mode, mask=mask, bias=bias, gate_bounds=gate_bounds,
                      gate_all=gate_all, residual=residual, clamped=clamped, check_ids=False)
        hidden.copy_(work)
        return acts
    if use_compiled(hidden.device):
        return torch.ops.steerkern.steer_(hidden, dictionary.contiguous(), ids, alpha, mode, mask, bias, gate_bounds,
                                          gate_all, residual, clamped)
    steered, acts = reference.steer(hidden, dictionary, ids, alpha, mode=mode, mask=mask, bias=bias,
                                    gate_bounds=gate_bounds, gate_all=gate_all, residual=residual, clamped=clamped)
    if mode != "detect":
        hidden.copy_(steered)
    return acts


def steer_prepared_(hidden, dictionary, concept_ids, coeffs, mode, mask, bias, gate_bounds=None, gate_all=None,
                    residual=None, clamped=None):
    """``steer_`` for a program checked once and called at every forward (the hooks): int64 ids,
    float32 coeffs (and gate bounds) and a contiguous dictionary already. The compiled op checks
    shapes, dtypes and devices itself, so the Python checks (tens of microseconds a step) are
    skipped when it runs."""
    if use_compiled(hidden.device) and hidden.is_contiguous():
        return torch.ops.steerkern.steer_(hidden, dictionary, concept_ids, coeffs, mode, mask, bias, gate_bounds,
                                          gate_all, residual, clamped)
    return steer_(hidden, dictionary, concept_ids, coeffs, mode=mode, mask=mask, bias=bias, gate_bounds=gate_bounds,
                  gate_all=gate_all, residual=residual, clamped=clamped, check_ids=False)


def detect(hidden, dictionary, *, bias=None, threshold=None, encoder=None, mask=None, reduce="none"):
    """Dense detection over all N concepts (see ``reference.detect`` for the math)."""
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    weight, is_encoder, mask = check_detect_args(hidden, dictionary, bias, threshold, encoder, mask)
    if use_compiled(hidden.device):
        return torch.ops.steerkern.detect(hidden, weight, is_encoder, bias, threshold, mask, reduce == "max")
    return reference.detect(
        hidden, dictionary, bias=bias, threshold=threshold, encoder=encoder, mask=mask, reduce=reduce
    )


def fill_token_tables_(ids, coeffs, clamped, positions, query_start_loc, request_ids, request_coeffs, request_kind,
                       request_prefix, request_prompt, request_clamped):
    """Fill the first ``len(positions)`` rows of a serving step's per-token tables ``ids`` and
    ``coeffs`` (groups, max_tokens, K) and ``clamped`` (max_tokens,) from the per-request tables
    (see ``reference.token_tables`` for the math): one kernel, no host sync."""
    if use_compiled(ids.device):
        torch.ops.steerkern.fill_token_tables_(ids, coeffs, clamped, positions, query_start_loc, request_ids,
                                               request_coeffs, request_kind, request_prefix, request_prompt,
                                               request_clamped)
        return
    tokens = positions.shape[0]
    token_ids, token_coeffs, token_clamped = reference.token_tables(
        positions, query_start_loc, request_ids, request_coeffs, request_kind, request_prefix, request_prompt,
        request_clamped)
    ids[:, :tokens].copy_(token_ids)
    coeffs[:, :tokens].copy_(token_coeffs)
    clamped[:tokens].copy_(token_clamped)


def _register_fake_kernels():
    @torch.library.register_fake("steerkern::steer_")
    def _steer_fake(hidden, dictionary, concept_ids, coeffs, steer_mode, mask, bias, gate_bounds=None, gate_all=None,
                    residual=None, clamped=None):
        return hidden.new_empty((*hidden.shape[:-1], concept_ids.shape[-1]), dtype=torch.float32)

    @torch.library.register_fake("steerkern::fill_token_tables_")
    def _fill_token_tables_fake(ids, coeffs, clamped, positions, query_start_loc, request_ids, request_coeffs,
                                request_kind, request_prefix, request_prompt, request_clamped):
        return None

    @torch.library.register_fake("steerkern::detect")
    def _detect_fake(hidden, weight, weight_is_encoder, bias, threshold, mask, reduce_max):
        concepts = weight.shape[1] if weight_is_encoder else weight.shape[0]
        if not reduce_max:
            shape = (*hidden.shape[:-1], concepts)
        else:
            shape = (hidden.shape[0], concepts) if hidden.dim() == 3 else (concepts,)
        return hidden.new_empty(shape, dtype=torch.float32)


if load_compiled() is not None:
    _register_fake_kernels()
