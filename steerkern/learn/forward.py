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
    return _hidden_of(_read_layer_output(model, layer, batch))


def _read_layer_output(model, layer: int, batch):
    captured = []

    def capture(module, args, output):
        captured.append(output)
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


class LayerOutputs:
    """Each example's output of decoder layer ``layer``, computed once: the layers up to it are
    frozen and come before the intervention, so their output for an example is the same at every
    step and epoch that reads it. Kept on the model's device in its dtype (examples × tokens × d).
    """

    def __init__(self, model, layer: int, encoder, encoded: dict, batch_size: int = 32):
        self.layer = layer
        self.rows: dict[int, torch.Tensor] = {}
        self.tuple_outputs = False
        device = model_device(model)
        order = sorted(encoded, key=lambda index: (len(encoded[index].input_ids), index))  # little padding
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = encoder.collate([encoded[index] for index in indices], device)
            with torch.no_grad():
                output = _read_layer_output(model, layer, batch)
            self.tuple_outputs = isinstance(output, tuple)
            hidden = _hidden_of(output)
            for row, index in enumerate(indices):
                self.rows[index] = hidden[row, : len(encoded[index].input_ids)].clone()

    def collate(self, indices, width: int) -> torch.Tensor:
        """The rows of ``indices`` right-padded with zeros to ``width`` tokens, as ``Encoder.collate`` pads."""
        first = self.rows[indices[0]]
        hidden = first.new_zeros((len(indices), width, first.shape[-1]))
        for row, index in enumerate(indices):
            hidden[row, : self.rows[index].shape[0]] = self.rows[index]
        return hidden

    @contextlib.contextmanager
    def replacing(self, model, hidden: torch.Tensor):
        """Within the block, the decoder layers up to ``layer`` pass their input through unchanged
        and ``layer``'s output is ``hidden`` (from ``collate``)."""
        layers = list(find_decoder_layers(model).layers[: self.layer + 1])

        def passthrough(hidden_states, *args, **kwargs):
            return (hidden_states,) if self.tuple_outputs else hidden_states

        for module in layers:
            module.forward = passthrough
        handle = layers[-1].register_forward_hook(lambda module, args, output: _with_hidden(output, hidden))
        try:
            yield
        finally:
            handle.remove()
            for module in layers:
                del module.forward
