"""``steer``: the functional, differentiable form of ``steer_`` (DESIGN.md §1, gradients).

``torch.ops.steerkern.steer`` is a ``torch.library`` custom op: its forward runs the fused kernel
on a copy of ``hidden`` (or the reference where the kernel does not apply: no ``_C``, or float64,
which the gradient checks use), its fake kernel lets ``torch.compile`` trace it, and its backward
is built from the same op where the math allows:

- through the activations ``a = ReLU(h·w + b)``, the gradient with respect to ``h`` is a steering
  add with coefficients ``ga·[a > 0]`` on per-row programs, which is what ``steer_`` computes;
- the gradient with respect to the rows is a scatter-add (``index_add_``) over the rows that used
  them, of ``coef·g`` (steering) and ``ga·[a > 0]·h`` (detection).

Clamp steers with ``α − a``, so its activation path carries ``−(g·w)`` as well.
"""

from __future__ import annotations

import torch

from . import reference
from ._backend import load_compiled, use_compiled
from .validation import FLOAT_TYPES, check_steer_args

load_compiled()  # the C++ library defines the namespace first; this op joins it


def steer(hidden, dictionary, concept_ids, coeffs, *, mode="add", mask=None, bias=None):
    """Return ``(steered, acts)`` without touching ``hidden``; differentiable with respect to
    ``hidden``, ``dictionary``, ``coeffs`` and ``bias``.

    Arguments as ``steer_`` (see ``steerkern.ops.steer_``); float64 inputs run the reference math.
    Rows outside ``mask`` are not steered and get no steering gradient; acts cover every row.
    """
    _check(hidden, dictionary, concept_ids, coeffs, mode, mask, bias)
    return torch.ops.steerkern.steer(hidden, dictionary, concept_ids.long(), coeffs, mode, mask, bias)


def _check(hidden, dictionary, concept_ids, coeffs, mode, mask, bias):
    """``steer_``'s argument checks; float64 tensors are checked as float32 stand-ins (no copy)."""

    def stand_in(tensor):
        if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float64:
            return tensor.new_empty(()).float().expand(tensor.shape)
        return tensor

    check_ids = not torch.compiler.is_compiling()
    check_steer_args(stand_in(hidden), stand_in(dictionary), concept_ids, coeffs, mode, mask, bias, check_ids)


def _runs_kernel(hidden, dictionary) -> bool:
    return hidden.dtype in FLOAT_TYPES and dictionary.dtype in (hidden.dtype, torch.float32) and use_compiled()


@torch.library.custom_op("steerkern::steer", mutates_args=())
def _steer_op(
    hidden: torch.Tensor,
    dictionary: torch.Tensor,
    concept_ids: torch.Tensor,
    coeffs: torch.Tensor,
    mode: str,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _runs_kernel(hidden, dictionary):
        steered = hidden.contiguous().clone()
        acts = torch.ops.steerkern.steer_(
            steered, dictionary.contiguous(), concept_ids.contiguous(), coeffs.float().contiguous(), mode, mask, bias
        )
        return steered, acts
    steered, acts = reference.steer(hidden, dictionary, concept_ids, coeffs, mode=mode, mask=mask, bias=bias)
    return steered, acts.to(_acts_dtype(hidden))


@_steer_op.register_fake
def _(hidden, dictionary, concept_ids, coeffs, mode, mask, bias):
    acts = hidden.new_empty((*hidden.shape[:-1], concept_ids.shape[-1]), dtype=_acts_dtype(hidden))
    return torch.empty_like(hidden, memory_format=torch.contiguous_format), acts


def _acts_dtype(hidden) -> torch.dtype:
    """float32, as ``steer_`` returns; float64 for float64 inputs, so gradients can be checked."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _setup_context(ctx, inputs, output):
    hidden, dictionary, concept_ids, coeffs, mode, mask, bias = inputs
    ctx.mode = mode
    ctx.save_for_backward(hidden, dictionary, concept_ids, coeffs, mask, bias, output[1])


def _backward(ctx, grad_steered, grad_acts):
    hidden, dictionary, concept_ids, coeffs, mask, bias, acts = ctx.saved_tensors
    need_hidden, need_dictionary, _, need_coeffs, _, _, need_bias = ctx.needs_input_grad
    work = torch.promote_types(hidden.dtype, torch.float32)
    ids = reference._programs_per_row(hidden, concept_ids)
    filled = ids >= 0
    rows = dictionary.to(work)[ids.clamp(min=0)]  # (..., K, d)
    h = hidden.to(work)
    g = torch.zeros_like(h) if grad_steered is None else grad_steered.to(work)  # ∂h'/∂h = I in every mode
    steering = ctx.mode != "detect" and grad_steered is not None
    if steering:
        steered_rows = filled if mask is None else filled & mask[..., None]
        g_dot_w = torch.where(steered_rows, torch.einsum("...d,...kd->...k", g, rows), 0)
    # The activations' gradient where the ReLU passes: from acts themselves, and for clamp from α − a.
    grad_pre = torch.zeros_like(acts, dtype=work) if grad_acts is None else grad_acts.to(work)
    if steering and ctx.mode == "clamp":
        grad_pre = grad_pre - g_dot_w
    grad_pre = torch.where(filled & (acts > 0), grad_pre, 0)

    grad_hidden = grad_dictionary = grad_coeffs = grad_bias = None
    if need_hidden:
        grad_hidden = _add_rows(g, dictionary, ids, grad_pre).to(hidden.dtype)
    if need_coeffs:
        grad_coeffs = g_dot_w if steering else torch.zeros_like(grad_pre)
        if concept_ids.dim() == 2 and hidden.dim() == 3:  # one program per sequence: sum over its rows
            grad_coeffs = grad_coeffs.sum(dim=1)
        grad_coeffs = grad_coeffs.to(coeffs.dtype)
    if need_dictionary:
        per_slot = grad_pre[..., None] * h[..., None, :]
        if steering:
            alpha = reference._programs_per_row(hidden, coeffs).to(work)
            coef = alpha if ctx.mode == "add" else alpha - acts.to(work)
            coef = torch.where(steered_rows, coef, 0)
            per_slot = per_slot + coef[..., None] * g[..., None, :]
        grad_dictionary = torch.zeros_like(dictionary, dtype=work)
        grad_dictionary.index_add_(0, ids.clamp(min=0).flatten(), (per_slot * filled[..., None]).flatten(0, -2))
        grad_dictionary = grad_dictionary.to(dictionary.dtype)
    if need_bias and bias is not None:
        grad_bias = torch.zeros_like(bias, dtype=work).index_add_(0, ids.clamp(min=0).flatten(), grad_pre.flatten())
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_dictionary, None, grad_coeffs, None, None, grad_bias


def _add_rows(upstream, dictionary, ids, coefficients):
    """``upstream + Σ_k coefficients_k · W[ids_k]`` per row: a steering add with per-row programs."""
    out, _ = torch.ops.steerkern.steer(upstream, dictionary, ids, coefficients, "add", None, None)
    return out


_steer_op.register_autograd(_backward, setup_context=_setup_context)
