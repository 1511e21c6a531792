"""The math of steerkern in plain PyTorch: the oracle for the kernels and the fallback backend.

Written to read like DESIGN.md §1, without mutation and without cleverness.
"""

from __future__ import annotations

import torch

MODES = ("add", "clamp", "detect")


def _programs_per_row(hidden: torch.Tensor, program: torch.Tensor) -> torch.Tensor:
    """Expand a per-sequence program ``(B, K)`` to one per row ``(B, S, K)``; per-row programs pass."""
    if hidden.dim() == 3 and program.dim() == 2:
        return program[:, None, :].expand(hidden.shape[0], hidden.shape[1], program.shape[-1])
    return program


def steer(hidden, dictionary, concept_ids, coeffs, *, mode="add", mask=None, bias=None, gate_bounds=None,
          gate_all=None, residual=None, clamped=None):
    """Return ``(steered_hidden, acts)``; ``hidden`` itself is left untouched.

    acts[..., k] = ReLU(h · W[c_k] + bias[c_k]) on the pre-steering values, 0 for empty slots.
    add:    h' = h + Σ_k α_k W[c_k]
    clamp:  h' = h + Σ_k (α_k − a_k) W[c_k]
    detect: h' = h
    Steering applies only where ``mask`` is true; h + delta is computed in float32, rounded once.
    ``gate_bounds`` (..., K, 2) = (above, below) makes a filled slot k a gate (NaN: a steering
    slot): it steers nothing, and a row is steered only where one of its gates has
    above < a_k < below (all of them where ``gate_all``, one flag per program, is true), or where
    it has no gate.
    With ``residual`` (hidden's shape and dtype) the activations are read on the residual stream
    ``hidden + residual`` (rounded to hidden's dtype) and ``h`` above stays ``hidden``: the update
    goes to hidden alone. In mode clamp, ``clamped`` (one flag per program) picks the programs that
    clamp; the others add.
    """
    work = torch.promote_types(hidden.dtype, torch.float32)  # float64 stays float64 (gradient checks)
    ids = _programs_per_row(hidden, concept_ids).long()
    alpha = _programs_per_row(hidden, coeffs).to(work)
    filled = ids >= 0
    rows = dictionary.to(work)[ids.clamp(min=0)]  # (..., K, d)
    h = hidden.to(work)
    read = h if residual is None else (hidden + residual).to(work)

    pre = torch.einsum("...d,...kd->...k", read, rows)
    if bias is not None:
        pre = pre + bias.to(work)[ids.clamp(min=0)]
    acts = torch.where(filled, torch.relu(pre), torch.zeros_like(pre))

    if mode == "detect":
        return hidden.clone(), acts
    coef = alpha if mode == "add" else alpha - acts
    if clamped is not None:
        clamps = _programs_per_row(hidden, clamped[..., None])[..., 0].expand(ids.shape[:-1])
        coef = torch.where(clamps[..., None], coef, alpha)
    coef = torch.where(filled, coef, torch.zeros_like(coef))
    if gate_bounds is not None:
        above = _programs_per_row(hidden, gate_bounds[..., 0]).float()
        below = _programs_per_row(hidden, gate_bounds[..., 1]).float()
        gates = ~above.isnan() & filled
        passes = (acts > above) & (acts < below)
        every = torch.zeros(ids.shape[:-1], dtype=torch.bool, device=ids.device)
        if gate_all is not None:
            every = _programs_per_row(hidden, gate_all[..., None])[..., 0].expand(ids.shape[:-1])
        opened = torch.where(every, (passes | ~gates).all(-1), (passes & gates).any(-1)) | ~gates.any(-1)
        mask = opened if mask is None else mask & opened
        coef = torch.where(gates, torch.zeros_like(coef), coef)
    delta = torch.einsum("...k,...kd->...d", coef, rows)
    steered = h + delta
    if mask is not None:
        steered = torch.where(mask[..., None], steered, h)
    return steered.to(hidden.dtype), acts


def detect(hidden, dictionary, *, bias=None, threshold=None, encoder=None, mask=None, reduce="none"):
    """Dense detection over all N concepts: ``(..., N)`` per row, or the max over kept rows.

    Scores are ReLU(h · W[n] + bias[n]); with ``encoder`` (d, N) the product uses the encoder
    instead of the dictionary rows; with ``threshold`` the JumpReLU form (pre > θ) · ReLU(pre).
    With ``reduce="max"`` a (B, S, d) input gives (B, N) and a (T, d) input gives (N,): the max
    over the rows ``mask`` keeps (0 where none is kept). With ``reduce="none"`` rows outside the
    mask score 0.
    """
    weight = encoder.float() if encoder is not None else dictionary.float().T
    pre = hidden.float() @ weight
    if bias is not None:
        pre = pre + bias.float()
    scores = torch.relu(pre)
    if threshold is not None:
        scores = torch.where(pre > threshold.float(), scores, torch.zeros_like(scores))
    if mask is not None:
        scores = torch.where(mask[..., None], scores, torch.zeros_like(scores))
    if reduce == "max":
        return scores.amax(dim=-2)
    return scores


# The positions a serving program steers (the kinds of ``token_tables``' request_kind).
UNSTEERED, ALL, PROMPT, GENERATION = 0, 1, 2, 3
POSITION_KINDS = {"all": ALL, "prompt": PROMPT, "generation": GENERATION}


def token_tables(positions, query_start_loc, request_ids, request_coeffs, request_kind, request_prefix, request_prompt,
                 request_clamped):
    """A serving step's per-token programs from its per-request ones: ``(ids, coeffs, clamped)``,
    ``(groups, T, K)``, ``(groups, T, K)`` and ``(T,)`` for the step's T = len(positions) tokens.

    Token t belongs to the request r whose tokens ``query_start_loc[r] <= t < query_start_loc[r + 1]``
    hold it (rows past the last request's are padding); it takes r's slots, with its ids emptied
    (-1) where the program does not apply: padding, positions below r's prefix length, and prompt
    or generated positions (``positions < request_prompt[r]`` is the prompt) as ``request_kind[r]``
    excludes them. ``query_start_loc=None`` (a dummy run): nothing is steered.
    """
    tokens = positions.shape[0]
    groups, max_requests, slots = request_ids.shape
    if query_start_loc is None:
        return (torch.full((groups, tokens, slots), -1, dtype=torch.long, device=positions.device),
                torch.zeros((groups, tokens, slots), dtype=torch.float32, device=positions.device),
                torch.zeros(tokens, dtype=torch.bool, device=positions.device))
    token = torch.arange(tokens, device=positions.device).to(query_start_loc.dtype)
    request = torch.searchsorted(query_start_loc[1:], token, right=True).clamp(max=max_requests - 1)
    kind = request_kind[request]
    in_prompt = positions < request_prompt[request]
    steered = (token < query_start_loc[-1]) & (positions >= request_prefix[request]) & (
        (kind == ALL) | ((kind == PROMPT) & in_prompt) | ((kind == GENERATION) & ~in_prompt)
    )
    ids = torch.where(steered[:, None], request_ids[:, request], -1)
    return ids, request_coeffs[:, request], request_clamped[request]
