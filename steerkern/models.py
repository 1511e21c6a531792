"""Finding the decoder layers of Hugging Face causal LMs, and the module that runs them.

Hooks go on the decoder layers (their output is the residual stream AxBench's dictionaries were
trained on) and on the module that owns the layer list, whose forward receives the 2-D attention
mask and the cache: that is where the hooks learn which rows are padding and where each row sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Where the layer list lives, tried in order: Gemma-2, Gemma-3 text, Llama, Qwen-2, Mistral (model.layers);
# Gemma-3 multimodal (transformers 5.x, then 4.x); a bare decoder stack; GPT-2 / GPT-NeoX style.
LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "layers",
    "transformer.h",
    "gpt_neox.layers",
)


@dataclass(frozen=True)
class DecoderLayers:
    """The decoder layers of a model and the module whose forward runs them."""

    stack: torch.nn.Module
    layers: torch.nn.ModuleList
    path: str


def _get_path(model: torch.nn.Module, path: str):
    module = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_decoder_layers(model: torch.nn.Module, layers_attr: str | None = None) -> DecoderLayers:
    """Locate the decoder layer list (``layers_attr``, a dotted path, overrides the search)."""
    paths = (layers_attr,) if layers_attr is not None else LAYER_PATHS
    for path in paths:
        layers = _get_path(model, path)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            parent_path = path.rpartition(".")[0]
            stack = _get_path(model, parent_path) if parent_path else model
            return DecoderLayers(stack=stack, layers=layers, path=path)
    if layers_attr is not None:
        raise ValueError(
            f"layers_attr={layers_attr!r} does not name a non-empty torch.nn.ModuleList on {type(model).__name__}"
        )
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__} (tried {', '.join(LAYER_PATHS)}); "
        "pass layers_attr='path.to.layers' naming its ModuleList of decoder layers"
    )


def resolve_layer_indices(indices, num_layers: int) -> list[int]:
    """Turn layer indices (negative ones count from the end) into distinct indices in [0, num_layers)."""
    if isinstance(indices, int):
        indices = [indices]
    resolved = []
    for index in indices:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"layer indices must be ints, got {index!r}")
        if not -num_layers <= index < num_layers:
            raise ValueError(f"layer {index} is out of range for a model with {num_layers} decoder layers")
        index %= num_layers
        if index in resolved:
            raise ValueError(f"layer {index} is given twice")
        resolved.append(index)
    if not resolved:
        raise ValueError("at least one layer is needed")
    return resolved


def hidden_size(model: torch.nn.Module) -> int | None:
    """The residual-stream width from the model's (text) config, or None if the model has no config."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "hidden_size", None)


def module_device_and_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a layer's floating-point weights (float32 on the CPU for a weightless module)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32
