"""Finding the decoder layers of Gemma-2, Gemma-3, Llama and Qwen-2 models, and steering them."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
)

import steerkern
from steerkern.hooks import Steerer
from steerkern.models import find_decoder_layers, hidden_size, resolve_layer_indices
from tests.tiny_models import random_batch, tiny_gemma2, tiny_llama

TEXT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "attn_implementation": "eager",
}


def gemma3_text():
    return Gemma3ForCausalLM(Gemma3TextConfig(**TEXT, head_dim=16))


def gemma3_multimodal():
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**TEXT, head_dim=16), vision_config=vision, mm_tokens_per_image=4
    )
    return Gemma3ForConditionalGeneration(config)


def qwen2():
    return Qwen2ForCausalLM(Qwen2Config(**TEXT))


BUILDERS = {
    "gemma2": (tiny_gemma2, "model.layers"),
    "llama": (tiny_llama, "model.layers"),
    "qwen2": (qwen2, "model.layers"),
    "gemma3": (gemma3_text, "model.layers"),
    "gemma3-multimodal": (gemma3_multimodal, "model.language_model.layers"),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_layers_are_found_and_the_last_one_is_steered(name):
    torch.manual_seed(0)
    build, path = BUILDERS[name]
    model = build().eval()
    found = find_decoder_layers(model)
    assert found.path == path
    assert found.layers is found.stack.layers
    width = hidden_size(model)
    rows = torch.randn(4, width)
    batch = random_batch([3, 5], model.config.get_text_config().vocab_size)
    captured = []

    def capture(module, args, output):
        captured.append(output.clone())

    with torch.no_grad():
        handle = found.layers[-1].register_forward_hook(capture)
        model(**batch)
        handle.remove()
        with Steerer(model, rows, layers=[-1]).steer([[1], [2, 3]], [[2.0], [1.0, -1.0]]):
            handle = found.layers[-1].register_forward_hook(capture)  # after the steering hook
            model(**batch)
            handle.remove()
    unhooked, hooked = captured
    expected = unhooked.clone()
    ids = torch.tensor([[1, -1], [2, 3]])
    coeffs = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
    real = batch["attention_mask"].bool()
    steerkern.steer_(expected, rows, ids, coeffs, mask=real)
    assert torch.equal(hooked, expected)


def test_layers_attr_overrides_the_search_and_unknown_models_get_a_clear_error():
    model = tiny_gemma2()
    found = find_decoder_layers(model.model, layers_attr="layers")
    assert found.stack is model.model and found.layers is model.model.layers
    with pytest.raises(ValueError, match="layers_attr='model.decoder'"):
        find_decoder_layers(model, layers_attr="model.decoder")
    with pytest.raises(ValueError, match=r"cannot find the decoder layers of Linear.*layers_attr="):
        find_decoder_layers(torch.nn.Linear(2, 2))


def test_layer_indices_count_from_the_end_and_are_checked():
    assert resolve_layer_indices([0, -1, 20], 26) == [0, 25, 20]
    assert resolve_layer_indices(-2, 26) == [24]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer_indices([26], 26)
    with pytest.raises(ValueError, match="twice"):
        resolve_layer_indices([25, -1], 26)
    with pytest.raises(TypeError):
        resolve_layer_indices(["20"], 26)
