"""Conditional steering on a tiny Gemma-2: gates read at a layer, thresholded on the device, and
applied as the steering op's row mask, checked against a manual two-pass computation."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig

import steerkern
from steerkern import Condition, all_of, any_of, reference
from steerkern.hooks import Steerer, steering_program
from tests.test_hooks import dictionary, gemma, recording  # noqa: F401 (fixtures)
from tests.tiny_models import random_batch, tiny_gemma2

GATE_LAYER, STEER_LAYER = 0, 1
GATE = 5
CONCEPTS = [[3], [4, 7], [3]]
FACTORS = [[1.5], [0.5, -2.0], [2.0]]
LENGTHS = [6, 9, 4]


def unhooked_outputs(model, batch, layers):
    """Each layer's output of one plain forward pass."""
    outputs = {}
    handles = [model.model.layers[layer].register_forward_hook(
        lambda m, a, out, layer=layer: outputs.__setitem__(layer, out.clone())) for layer in layers]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def gate_acts(hidden, dictionary, concept=GATE):
    ids = torch.full(hidden.shape[:1] + (1,), concept)
    _, acts = reference.steer(hidden, dictionary.weight.to(hidden.dtype), ids, torch.zeros(ids.shape), mode="detect")
    return acts[..., 0]


def median_threshold(acts, real):
    """Halfway between the median activation and the next larger one: at the median itself, the
    row holding it would pass or fail with the last bit of its dot, which the kernel and the
    reference may round differently (they do on some instruction sets)."""
    values = acts[real]
    median = values.median()
    return float((median + values[values > median].min()) / 2)


def steered_by_hand(layer_output, dictionary, rows, mode="add"):
    ids, coeffs = steering_program(dictionary, CONCEPTS, FACTORS)
    expected = layer_output.clone()
    steerkern.steer_(expected, dictionary.weight.to(expected.dtype), ids, coeffs, mode=mode, mask=rows)
    return expected


def hooked_output(model, steerer, batch, **steer_kwargs):
    with steerer.steer(CONCEPTS, FACTORS, **steer_kwargs) as hooks, \
            recording(model.model.layers[STEER_LAYER]) as (_, after), torch.no_grad():
        model(**batch)
    return after[0], hooks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_token_gate_equals_detect_then_steer_by_hand(dictionary, dtype, padding_side, mode):
    model = tiny_gemma2(dtype=dtype)
    batch = random_batch(LENGTHS, model.config.vocab_size, padding_side=padding_side)
    real = batch["attention_mask"].bool()
    plain = unhooked_outputs(model, batch, [GATE_LAYER, STEER_LAYER])
    acts = gate_acts(plain[GATE_LAYER], dictionary)
    tau = median_threshold(acts, real)
    passes = (acts > tau) & real & (batch["attention_mask"].cumsum(-1) > 1)  # prefix_length=1
    assert 0 < passes.sum() < real.sum() - 3

    steerer = Steerer(model, dictionary, layers=[STEER_LAYER])
    gate = Condition("topic 5", above=tau, layer=GATE_LAYER)
    hooked, hooks = hooked_output(model, steerer, batch, mode=mode, prefix_length=1, when=gate)

    expected = steered_by_hand(plain[STEER_LAYER], dictionary, passes, mode)
    assert torch.equal(hooked, expected)
    assert torch.equal(hooked[~passes], plain[STEER_LAYER][~passes])  # rows the gate stops: bitwise unchanged
    assert torch.equal(hooks.readout[STEER_LAYER].steered, passes)
    torch.testing.assert_close(hooks.readout[GATE_LAYER].gate_acts[..., 0], acts, rtol=1e-5, atol=1e-4)


def test_a_latched_gate_at_the_steering_layer_reads_the_rows_before_they_are_steered(gemma, dictionary):
    # Not a token gate, so not fused: a detect-mode pass reads the gate at the layer's output,
    # then the steering pass writes the rows from the first one that fires on.
    batch = random_batch(LENGTHS, gemma.config.vocab_size, padding_side="right")
    real = batch["attention_mask"].bool()
    plain = unhooked_outputs(gemma, batch, [STEER_LAYER])[STEER_LAYER]
    acts = gate_acts(plain, dictionary)
    tau = float(torch.quantile(acts[real], 0.7))
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER])
    gate = Condition(GATE, above=tau, layer=STEER_LAYER, scope="latched")
    hooked, hooks = hooked_output(gemma, steerer, batch, when=gate)
    assert hooks._fused is None
    rows = torch.cummax(((acts > tau) & real).long(), dim=1).values.bool() & real
    assert 0 < rows.sum() < real.sum()
    assert torch.equal(hooked, steered_by_hand(plain, dictionary, rows))
    readout = hooks.readout[STEER_LAYER]
    torch.testing.assert_close(readout.gate_acts[..., 0], acts, rtol=1e-5, atol=1e-4)
    ids, _ = steering_program(dictionary, CONCEPTS, FACTORS)
    _, steered_acts = reference.steer(plain, dictionary.weight, ids, torch.zeros(ids.shape), mode="detect")
    torch.testing.assert_close(readout.acts, steered_acts, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_fused_gate_at_the_steering_layer_equals_reading_then_steering(gemma, dictionary, mode):
    # Gates at the first steering layer, on its dictionary, go into its op call: the kernel reads
    # each row once and writes it only where the gate passes. Layer 2 follows the same gate.
    batch = random_batch(LENGTHS, gemma.config.vocab_size, padding_side="right")
    real = batch["attention_mask"].bool()
    plain = unhooked_outputs(gemma, batch, [STEER_LAYER])[STEER_LAYER]
    a5, a6 = gate_acts(plain, dictionary, 5), gate_acts(plain, dictionary, 6)
    t5, t6 = median_threshold(a5, real), median_threshold(a6, real)
    when = [any_of(Condition(5, above=t5, layer=1), Condition(6, below=t6, layer=1)), None,
            all_of(Condition(5, above=t5, layer=1), Condition(6, below=t6, layer=1))]
    rows = torch.stack([(a5[0] > t5) | (a6[0] < t6), torch.ones_like(real[1]), (a5[2] > t5) & (a6[2] < t6)]) & real
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER, 2])
    hooks = steerer.steer(CONCEPTS, FACTORS, mode=mode, when=when)
    assert hooks._fused is not None
    with hooks, recording(gemma.model.layers[STEER_LAYER]) as (_, after), torch.no_grad():
        gemma(**batch)
    expected = steered_by_hand(plain, dictionary, rows, mode)
    torch.testing.assert_close(after[0], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(after[0][~rows], plain[~rows])
    for layer in (STEER_LAYER, 2):
        assert torch.equal(hooks.readout[layer].steered, rows)
    read = hooks.readout[STEER_LAYER].gate_acts
    torch.testing.assert_close(read[[0, 2]], torch.stack([a5, a6], -1)[[0, 2]], rtol=1e-5, atol=1e-4)
    assert not read[1].any()  # an unconditioned sequence has no gate slot: its gate acts are 0


def test_below_any_of_all_of_and_unconditioned_sequences(gemma, dictionary):
    batch = random_batch(LENGTHS, gemma.config.vocab_size)
    real = batch["attention_mask"].bool()
    plain = unhooked_outputs(gemma, batch, [GATE_LAYER, STEER_LAYER])
    a5, a6 = gate_acts(plain[GATE_LAYER], dictionary, 5), gate_acts(plain[GATE_LAYER], dictionary, 6)
    t5, t6 = median_threshold(a5, real), median_threshold(a6, real)
    low5 = Condition(5, below=t5, layer=GATE_LAYER)
    high6 = Condition(6, above=t6, layer=GATE_LAYER)
    when = [any_of(low5, high6), None, all_of(low5, high6)]
    expected_rows = torch.stack([(a5[0] < t5) | (a6[0] > t6), torch.ones_like(a5[1], dtype=torch.bool),
                                 (a5[2] < t5) & (a6[2] > t6)]) & real
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER])
    hooked, hooks = hooked_output(gemma, steerer, batch, when=when)
    assert torch.equal(hooked, steered_by_hand(plain[STEER_LAYER], dictionary, expected_rows))
    assert hooks.readout[GATE_LAYER].gate_acts.shape == (3, a5.shape[1], 2)


def generate_with(model, steerer, batch, tokens=6, **steer_kwargs):
    with steerer.steer(CONCEPTS, FACTORS, **steer_kwargs) as hooks, torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False)
    return out, hooks.readout


def counted_rows(batch, out, prefix_length):
    """(B, S) real rows the forward passes of ``generate`` ran (all but the last new token) from
    ``prefix_length`` on."""
    new_rows = out.shape[1] - 1 - batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(out.shape[0], new_rows, dtype=torch.long)], dim=1)
    return mask.bool() & (mask.cumsum(-1) > prefix_length)


@pytest.mark.parametrize("reduce", ["max", "mean", "last"])
def test_prompt_scope_decides_once_from_the_prompt_rows(gemma, dictionary, reduce):
    batch = random_batch(LENGTHS, gemma.config.vocab_size)
    width = batch["input_ids"].shape[1]
    plain = unhooked_outputs(gemma, batch, [GATE_LAYER])[GATE_LAYER]
    acts = gate_acts(plain, dictionary)
    counted = batch["attention_mask"].bool() & (batch["attention_mask"].cumsum(-1) > 1)
    kept = torch.where(counted, acts, torch.zeros_like(acts))
    scores = {"max": kept.amax(1), "mean": kept.sum(1) / counted.sum(1),
              "last": acts[:, -1]}[reduce]  # left padding: the last column is each prompt's last row
    tau = float(scores.min() + scores.max()) / 2  # some sequences pass, some do not
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER])
    gate = Condition(GATE, above=tau, layer=GATE_LAYER, scope="prompt", reduce=reduce)
    out, readout = generate_with(gemma, steerer, batch, prefix_length=1, when=gate)
    decided = scores > tau
    assert 0 < decided.sum() < len(decided)
    rows = counted_rows(batch, out, 1)
    steered = readout[STEER_LAYER].steered
    assert steered.shape == rows.shape
    assert torch.equal(steered, rows & decided[:, None])
    torch.testing.assert_close(readout[GATE_LAYER].gate_acts[:, :width, 0], acts, rtol=1e-5, atol=1e-4)


def test_latched_scope_steers_from_the_first_row_that_fires(gemma, dictionary):
    batch = random_batch(LENGTHS, gemma.config.vocab_size)
    plain = unhooked_outputs(gemma, batch, [GATE_LAYER])[GATE_LAYER]
    acts = gate_acts(plain, dictionary)
    tau = float(torch.quantile(acts[batch["attention_mask"].bool()], 0.8))
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER])
    gate = Condition(GATE, above=tau, layer=GATE_LAYER, scope="latched")
    out, readout = generate_with(gemma, steerer, batch, prefix_length=1, when=gate, tokens=8)
    rows = counted_rows(batch, out, 1)
    fires = (readout[GATE_LAYER].gate_acts[..., 0] > tau) & rows
    latched = torch.cummax(fires.long(), dim=1).values.bool() & rows
    assert 0 < latched.sum() < rows.sum()
    assert torch.equal(readout[STEER_LAYER].steered, latched)
    # A second generate starts with an open latch: the readout and the state begin again.
    with steerer.steer(CONCEPTS, FACTORS, prefix_length=1, when=gate) as hooks, torch.no_grad():
        gemma.generate(**batch, max_new_tokens=8, do_sample=False)
        gemma.generate(**batch, max_new_tokens=8, do_sample=False)
    assert torch.equal(hooks.readout[STEER_LAYER].steered, latched)


def test_token_scope_during_generation_follows_each_rows_own_score(gemma, dictionary):
    batch = random_batch(LENGTHS, gemma.config.vocab_size, padding_side="right")
    steerer = Steerer(gemma, dictionary, layers=[0, 2])
    tau = 0.5
    out, readout = generate_with(gemma, steerer, batch, when=Condition(GATE, above=tau, layer=0))
    rows = counted_rows(batch, out, 0)
    fires = (readout[0].gate_acts[..., 0] > tau) & rows
    assert 0 < fires.sum() < rows.sum()
    for layer in (0, 2):  # several steering layers share the gate
        assert torch.equal(readout[layer].steered, fires)
        assert readout[layer].acts.shape == (*rows.shape, 2)


def test_static_cache_compiled_generation_with_a_gate_matches_eager(dictionary):
    model = tiny_gemma2(num_layers=2, sliding_window=4)
    batch = random_batch([5, 8, 3], model.config.vocab_size)
    compile_config = CompileConfig(fullgraph=True, backend="inductor", mode=None)
    compile_config._compile_all_devices = True
    steerer = Steerer(model, dictionary, layers=[1])
    gate = [Condition(GATE, above=0.5, layer=0, scope="latched"), None, Condition(GATE, above=0.3, layer=1)]
    with steerer.steer(CONCEPTS, FACTORS, prefix_length=1, when=gate) as hooks, torch.no_grad():
        eager = model.generate(**batch, max_new_tokens=4, do_sample=False)
        eager_steered = hooks.readout[1].steered
        compiled = model.generate(**batch, max_new_tokens=4, do_sample=False, cache_implementation="static",
                                  compile_config=compile_config)
    assert hasattr(model, "_compiled_call")
    assert torch.equal(compiled, eager)
    assert eager_steered.any() and not eager_steered.all()


@pytest.mark.parametrize(
    "when, error, message",
    [
        (Condition(GATE, above=0.1, layer=2), ValueError, "read at layer 2, after the steering layer 1"),
        (Condition("no such topic", above=0.1, layer=0), ValueError, "unknown gate concept 'no such topic'"),
        (Condition(99, above=0.1, layer=0), ValueError, "concept 99 is outside"),
        ("topic 5", TypeError, "when= takes a Condition"),
        ((Condition(GATE, above=0.1, layer=0), Condition(6, above=0.1, layer=0)), TypeError, "when= takes a Condition"),
        ([None, None, None], ValueError, "holds no Condition"),
        ([Condition(GATE, above=0.1, layer=0)] * 2, ValueError, "when= lists 2 sequences but concepts lists 3"),
    ],
)
def test_bad_conditions_are_refused_when_the_hooks_are_made(gemma, dictionary, when, error, message):
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER])
    with pytest.raises(error, match=message):
        steerer.steer(CONCEPTS, FACTORS, when=when)



@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer=0), "above=, below= or both"),
        (dict(above=float("nan"), layer=0), "above= must be a finite number"),
        (dict(above="0.3", layer=0), "above= must be a finite number"),
        (dict(above=0.5, below=0.2, layer=0), "nothing can pass"),
        (dict(above=0.5), "needs the layer"),
        (dict(above=0.5, layer=0, scope="sentence"), "scope must be one of"),
        (dict(above=0.5, layer=0, scope="prompt", reduce="median"), "reduce must be one of"),
    ],
)
def test_bad_condition_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Condition(GATE, **kwargs)
    with pytest.raises(TypeError, match="one level"):
        any_of(all_of(Condition(GATE, above=0.1, layer=0)))


def test_a_dictionary_a_condition_brings_is_the_one_its_gate_reads(gemma, dictionary):
    # Each steer() call's gate reads the rows it was given, and the steerer keeps no copy of them.
    steerer = Steerer(gemma, dictionary, layers=[STEER_LAYER])
    for seed in range(40):
        rows = torch.randn(4, gemma.config.hidden_size, generator=torch.Generator().manual_seed(seed))
        hooks = steerer.steer(CONCEPTS, FACTORS, when=Condition(0, above=0.1, layer=0, dictionary=rows))
        assert torch.equal(hooks._gates.layers[0].dictionary.weight, rows)
    assert len(steerer._copies) == 1
