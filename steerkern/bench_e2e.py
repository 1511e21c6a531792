"""``steerkern bench --e2e``: greedy generation tokens/s of a Hugging Face model, unsteered, steered
through steerkern's hooks, steered conditionally (a gate concept read in the same op call), and
steered through a plain forward hook adding the same vector; the variants interleaved and rotated
from repeat to repeat, ratios taken within each repeat."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from .bench import format_table
from .conditions import Condition
from .dictionary import ConceptDictionary
from .hooks import Steerer
from .models import find_decoder_layers


E2E_VARIANTS = ("unsteered", "steerkern", "conditional", "forward hook")


@contextlib.contextmanager
def _forward_hook_adding(module, vector):
    """The plain PyTorch way: a forward hook returning the layer output plus a vector."""

    def add(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    handle = module.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def run_e2e(model, dictionary: ConceptDictionary, layer: int, *, batch=8, prompt_length=32, new_tokens=32,
            repeats=5, concept=0, factor=4.0, seed=0) -> dict:
    """Greedy generation tokens/s: unsteered, steered through steerkern hooks, steered where a gate
    concept (the next row) is present at ``layer`` (its op call reads the gate too), and steered
    through a plain forward hook adding the same vector (factor × max_act × row) at ``layer``."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    config = model.config.get_text_config()
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, config.vocab_size, (batch, prompt_length), generator=generator)
    if config.bos_token_id is not None:
        input_ids[:, 0] = config.bos_token_id
    inputs = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}
    pad = config.pad_token_id if config.pad_token_id is not None else 0

    steerer = Steerer(model, dictionary, layers=[layer])
    steering = steerer.steer(concepts=[[concept]] * batch, factors=[[factor]] * batch)
    gate = Condition((concept + 1) % len(dictionary), above=0.0, layer=layer)
    conditional = steerer.steer(concepts=[[concept]] * batch, factors=[[factor]] * batch, when=gate)
    vector = (dictionary.weight[concept].float() * factor * float(dictionary.max_act[concept])).to(device, dtype)
    layer_module = find_decoder_layers(model).layers[layer]
    contexts = {
        "unsteered": contextlib.nullcontext,
        "steerkern": lambda: steering,
        "conditional": lambda: conditional,
        "forward hook": lambda: _forward_hook_adding(layer_module, vector),
    }

    def generate(variant, tokens):
        with torch.no_grad(), contexts[variant]():
            output = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=pad)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return output

    for variant in E2E_VARIANTS:
        generate(variant, 2)  # warm-up: first-call allocations and lazy initialisation
    seconds = {variant: [] for variant in E2E_VARIANTS}
    outputs = {}
    # Interleaved, so that drift and noisy neighbours hit each variant alike, and rotated, so that
    # no variant always runs first in a repeat.
    for repeat in range(repeats):
        shift = repeat % len(E2E_VARIANTS)
        for variant in E2E_VARIANTS[shift:] + E2E_VARIANTS[:shift]:
            began = time.perf_counter()
            outputs[variant] = generate(variant, new_tokens)
            seconds[variant].append(time.perf_counter() - began)
    tokens_per_s = {variant: batch * new_tokens / statistics.median(values) for variant, values in seconds.items()}

    def speed_relative_to(variant, baseline):
        """Median over repeats of the speed ratio of two runs of the same repeat."""
        return statistics.median(base / own for base, own in zip(seconds[baseline], seconds[variant]))

    return {
        "batch": batch,
        "prompt_length": prompt_length,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "layer": layer,
        "concept_row": concept,
        "factor": factor,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "tokens_per_s": tokens_per_s,
        "seconds": seconds,
        "of_unsteered": {variant: speed_relative_to(variant, "unsteered") for variant in E2E_VARIANTS},
        "steerkern_over_unsteered": speed_relative_to("steerkern", "unsteered"),
        "steerkern_over_forward_hook": speed_relative_to("steerkern", "forward hook"),
        "conditional_over_steerkern": speed_relative_to("conditional", "steerkern"),
        "steered_tokens_agree": bool(torch.equal(outputs["steerkern"], outputs["forward hook"])),
        "steering_changed_tokens": not torch.equal(outputs["steerkern"], outputs["unsteered"]),
    }


def e2e_table(result: dict) -> str:
    """tokens/s are medians; "of unsteered" is the median of the ratios within each repeat."""
    rows = [[variant, f"{rate:.1f}", f"{100 * result['of_unsteered'][variant]:.1f}%"]
            for variant, rate in result["tokens_per_s"].items()]
    return format_table(["generation", "tokens/s", "of unsteered"], rows)
