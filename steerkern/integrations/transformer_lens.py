"""A TransformerLens hook function that steers the residual stream with steerkern's fused op.

TransformerLens hooks see only the activation, not the attention mask or the cache, so positions
follow AxBench's convention: every row is steered, except the first ``prefix_length`` positions
of a pass over more than one token (the prompt). No TransformerLens import is needed::

    hook = SteeringHook(dictionary, concepts=[[12]], factors=[[5.0]])
    with model.hooks(fwd_hooks=[(resid_post(10), hook)]):
        model.generate(tokens, max_new_tokens=64)
"""

from __future__ import annotations

import torch

from .. import ops
from ..programs import as_dictionary, fit_batch, steering_program


def resid_post(layer: int) -> str:
    """TransformerLens's name for the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


class SteeringHook:
    """``hook(activation, hook=...)``: steers ``activation`` (B, S, d) in place and returns it.

    ``concepts``/``factors`` as in ``Steerer.steer`` (α = factor × max_act). The dictionary and the
    program are copied to each device and dtype they meet once, on first use.
    """

    def __init__(self, dictionary, concepts, factors=None, *, mode="add", prefix_length=0):
        if mode not in ("add", "clamp"):
            raise ValueError(f"mode must be 'add' or 'clamp', got {mode!r}")
        self.mode = mode
        self.prefix_length = prefix_length
        self._dictionary = as_dictionary(dictionary)
        self._ids, self._coeffs = steering_program(self._dictionary, concepts, factors)
        self._placed = {}

    def _on(self, activation):
        key = (activation.device, activation.dtype)
        if key not in self._placed:
            self._placed[key] = (
                self._dictionary.to(device=activation.device, dtype=activation.dtype),
                self._ids.to(activation.device),
                self._coeffs.to(activation.device),
            )
        return self._placed[key]

    def __call__(self, activation: torch.Tensor, hook=None) -> torch.Tensor:
        dictionary, ids, coeffs = self._on(activation)
        batch, length = activation.shape[:2]
        mask = None
        if self.prefix_length and length > 1:
            mask = (torch.arange(length, device=activation.device) >= self.prefix_length).expand(batch, length)
        ops.steer_(
            activation,
            dictionary.weight,
            fit_batch(ids, batch, "concepts"),
            fit_batch(coeffs, batch, "concepts"),
            mode=self.mode,
            mask=mask,
            bias=dictionary.bias,
            check_ids=False,
        )
        return activation
