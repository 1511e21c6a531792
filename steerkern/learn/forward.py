"""Running the frozen model for learning: read one decoder layer's output, or rewrite it.

The model is used in place: its weights are neither copied nor changed, only their
``requires_grad`` flags are turned off while a dictionary trains (and restored after).
"""

from __future__ import annotations

import contextlib

import torch

from ..models import find_decoder_layers, hidden_size, resolve_layer_indices


class _LayerReached(Exception):
    """Raised by the reading hook: the layers above the one read need not run."""


def check_layer(model, layer: int) -> int:
    """``layer`` as a non-negative index; a clear error when the model has no such layer."""
    layers = find_decoder_layers(model).layers
    return resolve_layer_indices([layer], len(layers))[0]


def model_width(model) -> int:
    width = hidden_size(model)
    if width is None:
        raise ValueError(f"{type(model).__name__} has no config.hidden_size; steerkern.learn needs a transformers model")
    return width


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def read_layer(model, layer: int, batch) -> torch.Tensor:
    """The output of decoder layer ``layer`` for ``batch`` (B, S, d); the layers above do not run."""
    captured = []

    def capture(module, args, output):
        captured.append(_hidden_of(output))
        raise _LayerReached

    handle = find_decoder_layers(model).layers[layer].register_forward_hook(capture)
    try:
        model(**batch.model_inputs(), use_cache=False)
    except _LayerReached:
        pass
    finally:
        handle.remove()
    return captured[0]


@contextlib.contextmanager
def rewriting_layer(model, layer: int, rewrite):
    """Within the block, decoder layer ``layer``'s output hidden states are ``rewrite(hidden)``."""

    def hook(module, args, output):
        return _with_hidden(output, rewrite(_hidden_of(output)))

    handle = find_decoder_layers(model).layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen(model):
    """No gradient reaches the model's own weights while the block runs."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    was_training = model.training
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
