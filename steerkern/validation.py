"""Argument checks shared by the public ops: a clear error naming the argument, before any write."""

from __future__ import annotations

import torch

from .reference import MODES

FLOAT_TYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fail(message: str):
    raise ValueError(message)


def _check_hidden_and_dictionary(hidden, dictionary, dictionary_name="dictionary"):
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in FLOAT_TYPES:
        _fail(f"hidden must be a float32, bfloat16 or float16 tensor, got {getattr(hidden, 'dtype', type(hidden))}")
    if hidden.dim() not in (2, 3):
        _fail(f"hidden must be (B, S, d) or (T, d), got shape {tuple(hidden.shape)}")
    if hidden.shape[-1] == 0:
        _fail(f"hidden has d = 0 (shape {tuple(hidden.shape)}); rows need at least one feature")
    if dictionary.dim() != 2:
        _fail(f"{dictionary_name} must be 2-D, got shape {tuple(dictionary.shape)}")
    if dictionary.dtype not in (hidden.dtype, torch.float32):
        _fail(f"{dictionary_name} must have hidden's dtype ({hidden.dtype}) or float32, got {dictionary.dtype}")
    if dictionary.device != hidden.device:
        _fail(f"{dictionary_name} is on {dictionary.device} but hidden is on {hidden.device}")


def _check_vector(name, tensor, length, device):
    if tensor is None:
        return
    if tensor.dim() != 1 or tensor.shape[0] != length:
        _fail(f"{name} must have shape ({length},), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        _fail(f"{name} must be floating point, got {tensor.dtype}")
    if tensor.device != device:
        _fail(f"{name} is on {tensor.device} but hidden is on {device}")


def _check_mask(mask, hidden):
    if mask is None:
        return None
    rows = tuple(hidden.shape[:-1])
    if mask.dtype != torch.bool:
        _fail(f"mask must be a bool tensor, got {mask.dtype}")
    if tuple(mask.shape) != rows:
        _fail(f"mask must have shape {rows} (one flag per row of hidden), got {tuple(mask.shape)}")
    if mask.device != hidden.device:
        _fail(f"mask is on {mask.device} but hidden is on {hidden.device}")
    return mask.contiguous()


def check_gate_args(hidden, concept_ids, gate_bounds, gate_all):
    """Validate ``steer_``'s gate arguments; return (float32 bounds, bool gate_all), contiguous."""
    if gate_bounds is None:
        if gate_all is not None:
            _fail("gate_all needs gate_bounds")
        return None, None
    shape = tuple(concept_ids.shape) + (2,)
    if not gate_bounds.is_floating_point() or tuple(gate_bounds.shape) != shape:
        _fail(f"gate_bounds must be floating point with shape {shape} (above, below per slot), "
              f"got {gate_bounds.dtype} {tuple(gate_bounds.shape)}")
    if gate_bounds.device != hidden.device:
        _fail(f"gate_bounds is on {gate_bounds.device} but hidden is on {hidden.device}")
    return gate_bounds.float().contiguous(), _check_program_flags("gate_all", gate_all, concept_ids, hidden)


def _spans_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of two tensors (first to last element) intersect."""
    def span(tensor):
        start = tensor.data_ptr()
        extent = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride())) + 1
        return start, start + extent * tensor.element_size()

    (a_start, a_end), (b_start, b_end) = span(a), span(b)
    return a.numel() > 0 and b.numel() > 0 and a_start < b_end and b_start < a_end


def _check_program_flags(name, flags, concept_ids, hidden):
    """One bool per program on hidden's device (None passes), contiguous."""
    if flags is None:
        return None
    programs = tuple(concept_ids.shape[:-1])
    if flags.dtype != torch.bool or tuple(flags.shape) != programs:
        _fail(f"{name} must be a bool tensor of shape {programs} (one flag per program), "
              f"got {flags.dtype} {tuple(flags.shape)}")
    if flags.device != hidden.device:
        _fail(f"{name} is on {flags.device} but hidden is on {hidden.device}")
    return flags.contiguous()


def check_stream_args(hidden, concept_ids, mode, residual, clamped):
    """Validate ``steer_``'s ``residual`` (hidden's dtype, shape and device) and ``clamped`` (one
    bool per program, mode clamp only); return them contiguous."""
    if residual is not None:
        if residual.dtype != hidden.dtype or residual.shape != hidden.shape:
            _fail(f"residual must have hidden's dtype and shape ({hidden.dtype} {tuple(hidden.shape)}), "
                  f"got {residual.dtype} {tuple(residual.shape)}")
        if residual.device != hidden.device:
            _fail(f"residual is on {residual.device} but hidden is on {hidden.device}")
        residual = residual.contiguous()
        if _spans_overlap(residual, hidden):
            _fail("residual shares memory with hidden, which steer_ writes while it reads the residual; "
                  "pass a separate tensor")
    if clamped is not None and mode != "clamp":
        _fail(f"clamped picks the clamping programs of mode 'clamp'; mode is {mode!r}")
    return residual, _check_program_flags("clamped", clamped, concept_ids, hidden)


def check_steer_args(hidden, dictionary, concept_ids, coeffs, mode, mask, bias, check_ids):
    """Validate ``steer_`` arguments; return (int64 ids, float32 coeffs, bool mask), contiguous."""
    _check_hidden_and_dictionary(hidden, dictionary)
    n, d = dictionary.shape
    if hidden.shape[-1] != d:
        _fail(f"hidden's last dimension ({hidden.shape[-1]}) differs from the dictionary's d ({d})")
    if mode not in MODES:
        _fail(f"mode must be one of {MODES}, got {mode!r}")
    if concept_ids.dtype.is_floating_point or concept_ids.dtype in (torch.bool, torch.complex64, torch.complex128):
        _fail(f"concept_ids must be an integer tensor, got {concept_ids.dtype}")
    if not coeffs.is_floating_point():
        _fail(f"coeffs must be floating point, got {coeffs.dtype}")
    if coeffs.shape != concept_ids.shape:
        _fail(f"coeffs shape {tuple(coeffs.shape)} differs from concept_ids shape {tuple(concept_ids.shape)}")
    per_sequence = (hidden.shape[0], concept_ids.shape[-1]) if hidden.dim() == 3 else None
    per_row = tuple(hidden.shape[:-1]) + (concept_ids.shape[-1],)
    if concept_ids.dim() == 0 or tuple(concept_ids.shape) not in (per_sequence, per_row):
        expected = f"(B, K) = {hidden.shape[0]}, K or " if per_sequence else ""
        _fail(f"concept_ids must be {expected}one program per row {tuple(hidden.shape[:-1])} + (K,), got {tuple(concept_ids.shape)}")
    if concept_ids.shape[-1] == 0:
        _fail("concept_ids must have at least one slot (K >= 1)")
    for name, tensor in (("concept_ids", concept_ids), ("coeffs", coeffs)):
        if tensor.device != hidden.device:
            _fail(f"{name} is on {tensor.device} but hidden is on {hidden.device}")
    _check_vector("bias", bias, n, hidden.device)
    mask = _check_mask(mask, hidden)
    if check_ids and concept_ids.numel():
        low, high = int(concept_ids.min()), int(concept_ids.max())
        if low < -1 or high >= n:
            bad = low if low < -1 else high
            _fail(f"concept_ids holds {bad}, outside [-1, {n - 1}] for a dictionary of {n} concepts")
    return concept_ids.long().contiguous(), coeffs.float().contiguous(), mask


def check_detect_args(hidden, dictionary, bias, threshold, encoder, mask):
    """Validate ``detect`` arguments; return (weight, weight_is_encoder, contiguous mask)."""
    if encoder is not None:
        _check_hidden_and_dictionary(hidden, encoder, "encoder")
        d, n = encoder.shape
        weight, is_encoder = encoder, True
    else:
        _check_hidden_and_dictionary(hidden, dictionary)
        n, d = dictionary.shape
        weight, is_encoder = dictionary, False
    if hidden.shape[-1] != d:
        _fail(f"hidden's last dimension ({hidden.shape[-1]}) differs from the {'encoder' if is_encoder else 'dictionary'}'s d ({d})")
    _check_vector("bias", bias, n, hidden.device)
    _check_vector("threshold", threshold, n, hidden.device)
    return weight, is_encoder, _check_mask(mask, hidden)
