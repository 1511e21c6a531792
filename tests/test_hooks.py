"""Steering and detection hooks in tiny Gemma-2 / Llama models built from configs."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import CompileConfig

import steerkern
from steerkern import reference
from steerkern.dictionary import ConceptDictionary
from steerkern.hooks import Steerer, _LayerHook, read_rows, steering_program
from tests.tiny_models import random_batch, tiny_gemma2, tiny_llama

LAYER = 1
CONCEPTS = [[3], [4, 7], []]
FACTORS = [[1.5], [0.5, -2.0], []]


@pytest.fixture(scope="module")
def gemma():
    return tiny_gemma2()


@pytest.fixture(scope="module")
def dictionary(gemma):
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(11, gemma.config.hidden_size, generator=generator)
    rows = rows / rows.norm(dim=-1, keepdim=True) * 4
    max_act = torch.rand(11, generator=generator) + 0.5
    return ConceptDictionary(rows, max_act=max_act, concepts=[f"topic {i}" for i in range(11)])


@pytest.fixture(params=["reference", "auto"])
def backend(request, monkeypatch):
    monkeypatch.setenv("STEERKERN_BACKEND", request.param)
    return request.param


@contextlib.contextmanager
def recording(module):
    """A layer's outputs of each forward pass, before and after the hooks applied so far."""
    before, after = [], []
    handles = [
        module.register_forward_hook(lambda m, a, out: before.append(out.clone()), prepend=True),
        module.register_forward_hook(lambda m, a, out: after.append(out.clone())),
    ]
    try:
        yield before, after
    finally:
        for handle in handles:
            handle.remove()


def layer_output(model, batch, layer=LAYER):
    with recording(model.model.layers[layer]) as (_, after), torch.no_grad():
        logits = model(**batch).logits
    return after[0], logits


def generate(model, batch, tokens=6, **kwargs):
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=tokens, do_sample=False, **kwargs)


def test_programs_scale_factors_by_max_act_and_pad_with_empty_slots(dictionary):
    ids, coeffs = steering_program(dictionary, [[3], [4, "topic 7"], []], [[1.5], [0.5, -2.0], []])
    assert ids.tolist() == [[3, -1], [4, 7], [-1, -1]]
    max_act = dictionary.max_act
    expected = torch.tensor([[1.5 * max_act[3], 0.0], [0.5 * max_act[4], -2.0 * max_act[7]], [0.0, 0.0]])
    assert torch.equal(coeffs, expected)
    shared_ids, shared_coeffs = steering_program(dictionary, [5, 6], 2.0)
    assert shared_ids.tolist() == [[5, 6]] and torch.equal(shared_coeffs, 2.0 * max_act[[5, 6]][None])


@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_layer_output_equals_reference_on_unhooked_output(gemma, dictionary, backend, mode):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    unhooked, _ = layer_output(gemma, batch)
    with Steerer(gemma, dictionary, layers=[LAYER]).steer(CONCEPTS, FACTORS, mode=mode):
        hooked, _ = layer_output(gemma, batch)
    ids, coeffs = steering_program(dictionary, CONCEPTS, FACTORS)
    real = batch["attention_mask"].bool()
    expected, _ = reference.steer(unhooked, dictionary.weight, ids, coeffs, mode=mode, mask=real)
    if backend == "reference":
        assert torch.equal(hooked, expected)
    else:  # the compiled kernel may round differently: exact against the op, close to the reference
        fused = unhooked.clone()
        steerkern.steer_(fused, dictionary.weight, ids, coeffs, mode=mode, mask=real)
        assert torch.equal(hooked, fused)
        torch.testing.assert_close(hooked, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(hooked, unhooked)


def test_bf16_model_is_steered_with_a_bf16_copy_of_the_dictionary(dictionary):
    model = tiny_gemma2(dtype=torch.bfloat16)
    batch = random_batch([5, 8, 3], model.config.vocab_size)
    unhooked, _ = layer_output(model, batch)
    steerer = Steerer(model, dictionary, layers=[LAYER])
    copy = steerer._layers[LAYER].dictionary
    assert copy.dtype == torch.bfloat16 and copy.max_act.dtype == torch.float32
    with steerer.steer(CONCEPTS, FACTORS):
        hooked, _ = layer_output(model, batch)
    ids, coeffs = steering_program(dictionary, CONCEPTS, FACTORS)
    fused = unhooked.clone()
    steerkern.steer_(fused, copy.weight, ids, coeffs, mask=batch["attention_mask"].bool())
    assert torch.equal(hooked, fused)


def test_factor_zero_and_empty_programs_leave_logits_bitwise_unchanged(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    _, plain = layer_output(gemma, batch)
    steerer = Steerer(gemma, dictionary, layers=[0, LAYER])
    for concepts, factors in (([[3], [4, 7], [1]], [[0.0], [0.0, 0.0], [0.0]]), ([[], [], []], None)):
        with steerer.steer(concepts, factors):
            _, steered = layer_output(gemma, batch)
        assert torch.equal(steered, plain)


def test_a_shared_program_equals_the_same_program_per_sequence(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    with steerer.steer([4, 7], [0.5, 2.0]):
        shared = generate(gemma, batch)
    with steerer.steer([[4, 7]] * 3, [[0.5, 2.0]] * 3):
        per_sequence = generate(gemma, batch)
    assert torch.equal(shared, per_sequence)


@pytest.mark.parametrize("mode, prefix_length", [("add", 1), ("clamp", 0)])
def test_cached_steered_generation_equals_uncached(gemma, dictionary, mode, prefix_length):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    steerer = Steerer(gemma, dictionary, layers=[0, -1])
    with steerer.steer(CONCEPTS, FACTORS, mode=mode, prefix_length=prefix_length):
        cached = generate(gemma, batch)
        uncached = generate(gemma, batch, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, generate(gemma, batch))  # the steering changed the generations


def test_left_padded_batch_generates_as_each_sequence_alone(gemma, dictionary):
    lengths = [5, 8, 3]
    batch = random_batch(lengths, gemma.config.vocab_size, padding_side="left")
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    with steerer.steer(CONCEPTS, FACTORS, prefix_length=1):
        together = generate(gemma, batch)
    width = max(lengths)
    for row, length in enumerate(lengths):
        alone_batch = {key: value[row : row + 1, width - length :] for key, value in batch.items()}
        with steerer.steer(CONCEPTS[row : row + 1], FACTORS[row : row + 1], prefix_length=1):
            alone = generate(gemma, alone_batch)
        assert torch.equal(together[row, width - length :], alone[0])


def steered_rows(model, steering, run):
    """Which rows each forward pass changed at LAYER: one (B, S) bool tensor per pass."""
    with steering, recording(model.model.layers[LAYER]) as (before, after):
        run()
    return [(b != a).any(dim=-1) for b, a in zip(before, after)]


@pytest.mark.parametrize("positions", ["all", "prompt", "generation"])
@pytest.mark.parametrize("prefix_length", [0, 2])
def test_positions_and_prefix_length_touch_exactly_the_intended_rows(gemma, dictionary, positions, prefix_length):
    lengths = [5, 8, 3]
    batch = random_batch(lengths, gemma.config.vocab_size, padding_side="left")
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    concepts, factors = [[3], [4], [5]], [[2.0], [2.0], [2.0]]
    steering = steerer.steer(concepts, factors, positions=positions, prefix_length=prefix_length)
    passes = steered_rows(gemma, steering, lambda: generate(gemma, batch, tokens=3))
    assert len(passes) == 3 and passes[0].shape == (3, 8) and passes[1].shape == (3, 1)
    real = batch["attention_mask"].bool()
    rank = batch["attention_mask"].cumsum(-1) - 1
    prompt_rows = real & (rank >= prefix_length) if positions != "generation" else torch.zeros_like(real)
    assert torch.equal(passes[0], prompt_rows)
    for step in passes[1:]:
        assert bool(step.all()) == (positions != "prompt") and bool(step.any()) == (positions != "prompt")


def test_right_padding_and_prefix_steer_the_real_rows_after_the_prefix(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size, padding_side="right")
    steering = Steerer(gemma, dictionary, layers=[LAYER]).steer([3], [2.0], prefix_length=1)
    (rows,) = steered_rows(gemma, steering, lambda: gemma(**batch))
    real = batch["attention_mask"].bool()
    assert torch.equal(rows, real & (batch["attention_mask"].cumsum(-1) > 1))


def test_explicit_mask_selects_columns_and_later_tokens_follow_positions(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size, padding_side="left")
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, -2:] = True  # the last two prompt columns
    steering = Steerer(gemma, dictionary, layers=[LAYER]).steer([3], [2.0], mask=mask)
    passes = steered_rows(gemma, steering, lambda: generate(gemma, batch, tokens=2))
    assert torch.equal(passes[0], mask)
    assert bool(passes[1].all())


def test_several_layers_with_their_own_dictionaries(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    other = ConceptDictionary(torch.randn(5, gemma.config.hidden_size), max_act=torch.full((5,), 2.0))
    steerer = Steerer(gemma, {0: dictionary, -1: other})
    assert steerer.layers == [0, 2] and steerer.dictionary(-1) is other
    concepts, factors = [[1], [2, 4], []], [[1.0], [3.0, 0.5], []]
    with (
        steerer.steer(concepts, factors),
        recording(gemma.model.layers[0]) as first,
        recording(gemma.model.layers[2]) as last,
        torch.no_grad(),
    ):
        gemma(**batch)
    real = batch["attention_mask"].bool()
    for layer_dictionary, (before, after) in ((dictionary, first), (other, last)):
        ids, coeffs = steering_program(layer_dictionary, concepts, factors)
        fused = before[0].clone()
        steerkern.steer_(fused, layer_dictionary.weight, ids, coeffs, mask=real)
        assert torch.equal(after[0], fused)


def test_two_steerers_compose_in_the_order_they_were_applied(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    adding = Steerer(gemma, dictionary, layers=[LAYER]).steer([[3], [4], [5]], [[2.0], [1.0], [3.0]])
    clamping = Steerer(gemma, dictionary, layers=[LAYER]).steer([[4], [4], [4]], [[1.0], [1.0], [1.0]], mode="clamp")
    with adding, clamping, recording(gemma.model.layers[LAYER]) as (before, after), torch.no_grad():
        gemma(**batch)
    real = batch["attention_mask"].bool()
    expected = before[0].clone()
    for ids, coeffs, mode in (
        (*steering_program(dictionary, [[3], [4], [5]], [[2.0], [1.0], [3.0]]), "add"),
        (*steering_program(dictionary, [[4], [4], [4]], [[1.0], [1.0], [1.0]]), "clamp"),
    ):
        steerkern.steer_(expected, dictionary.weight, ids, coeffs, mode=mode, mask=real)
    assert torch.equal(after[0], expected)


def test_hooks_are_removed_on_exit_and_on_exceptions_and_can_be_reused(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    layer = gemma.model.layers[LAYER]
    counts = (len(layer._forward_hooks), len(gemma.model._forward_pre_hooks))
    steering = Steerer(gemma, dictionary, layers=[LAYER]).steer(CONCEPTS, FACTORS)
    with steering:
        first = generate(gemma, batch)
    with pytest.raises(KeyError), steering:
        raise KeyError("generation failed")
    assert (len(layer._forward_hooks), len(gemma.model._forward_pre_hooks)) == counts
    with steering:
        assert torch.equal(generate(gemma, batch), first)
        with pytest.raises(RuntimeError, match="already applied"):
            steering.apply()


def test_program_errors_are_raised_by_steer_not_during_generation(gemma, dictionary):
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    with pytest.raises(ValueError, match="outside the dictionary"):
        steerer.steer([[11]], [[1.0]])
    with pytest.raises(ValueError, match="same shape"):
        steerer.steer([[1, 2]], [[1.0]])
    with pytest.raises(ValueError, match="positions"):
        steerer.steer([[1]], positions="decode")
    with pytest.raises(ValueError, match="mode"):
        steerer.steer([[1]], mode="detect")
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    with pytest.raises(ValueError, match="2 sequences"), steerer.steer([[1], [2]]):
        gemma(**batch)


def test_a_dictionary_of_another_width_is_refused(gemma):
    with pytest.raises(ValueError, match="hidden size"):
        Steerer(gemma, torch.randn(4, gemma.config.hidden_size + 1), layers=[0])


def test_dictionary_copies_are_made_once_per_device_and_dtype(dictionary):
    model = tiny_gemma2()
    model.model.layers[2].to(torch.float64)
    steerer = Steerer(model, dictionary, layers=[0, 1, 2])
    copies = [steerer._layers[index].dictionary for index in (0, 1, 2)]
    assert copies[0] is copies[1] and copies[0] is not dictionary
    assert copies[2].dtype == torch.float64 and copies[0].dtype == torch.float32


def manual_scores(hidden, dictionary, valid):
    scores = torch.relu(hidden.float() @ dictionary.weight.float().T)
    return torch.where(valid[..., None], scores, torch.zeros_like(scores))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_detection_scores_equal_a_manual_computation(gemma, dictionary, padding_side):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size, padding_side=padding_side)
    hidden, _ = layer_output(gemma, batch)
    valid = batch["attention_mask"].bool() & (batch["attention_mask"].cumsum(-1) > 1)
    expected = manual_scores(hidden, dictionary, valid)
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    # Detection reads the layer's own output even while the same layer is steered.
    with (
        steerer.steer(CONCEPTS, FACTORS),
        steerer.detect(top_k=3, prefix_length=1, per_token=True) as readout,
        torch.no_grad(),
    ):
        gemma(**batch)
    torch.testing.assert_close(readout.per_token, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(readout.scores, expected.amax(dim=1), rtol=1e-5, atol=1e-5)
    top = readout.top_k
    assert torch.equal(top.ids, readout.scores.topk(3).indices)
    assert top.names[0] == [f"topic {i}" for i in top.ids[0].tolist()]
    with steerer.detect(concepts=[7, 2], prefix_length=1) as chosen, torch.no_grad():
        gemma(**batch)
    torch.testing.assert_close(chosen.scores, expected.amax(dim=1)[:, [7, 2]], rtol=1e-5, atol=1e-5)
    assert chosen.top_k.ids.tolist()[0] in ([7, 2], [2, 7])


def test_detection_over_generation_takes_the_max_over_prompt_and_new_tokens(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    steerer = Steerer(gemma, dictionary, layers=[LAYER])
    with steerer.detect(per_token=True) as readout:
        output = generate(gemma, batch, tokens=3)
    assert readout.per_token.shape == (3, 8 + 2, len(dictionary))  # the last token is never fed back
    full_mask = torch.cat([batch["attention_mask"], torch.ones(3, 2, dtype=torch.long)], dim=1)
    hidden, _ = layer_output(gemma, {"input_ids": output[:, :-1], "attention_mask": full_mask})
    expected = manual_scores(hidden, dictionary, full_mask.bool())
    torch.testing.assert_close(readout.scores, expected.amax(dim=1), rtol=1e-4, atol=1e-4)


def test_sae_dictionary_detection_uses_the_jumprelu_encoder(gemma):
    d, n = gemma.config.hidden_size, 9
    generator = torch.Generator().manual_seed(3)
    sae = ConceptDictionary(
        torch.randn(n, d, generator=generator),
        encoder=torch.randn(d, n, generator=generator),
        b_enc=torch.randn(n, generator=generator),
        threshold=torch.rand(n, generator=generator) * 5,
    )
    batch = random_batch([4, 6], gemma.config.vocab_size)
    hidden, _ = layer_output(gemma, batch)
    steerer = Steerer(gemma, sae, layers=[LAYER])
    with steerer.detect() as dense, torch.no_grad():
        gemma(**batch)
    with steerer.detect(concepts=[5, 0]) as chosen, torch.no_grad():
        gemma(**batch)
    expected = reference.detect(
        hidden, sae.weight, mask=batch["attention_mask"].bool(), reduce="max", **sae.detection_kwargs()
    )
    torch.testing.assert_close(dense.scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chosen.scores, expected[:, [5, 0]], rtol=1e-5, atol=1e-5)


def test_readout_of_several_layers_is_indexed_by_layer(gemma, dictionary):
    batch = random_batch([5, 8, 3], gemma.config.vocab_size)
    steerer = Steerer(gemma, dictionary, layers=[0, -1])
    with steerer.detect() as readout, torch.no_grad():
        gemma(**batch)
    assert readout.layers == [0, 2] and readout[-1].scores.shape == (3, len(dictionary))
    with pytest.raises(RuntimeError, match=r"readout\[layer\]"):
        _ = readout.scores


def test_llama_layers_are_found_and_steered(dictionary):
    llama = tiny_llama()
    rows = ConceptDictionary(torch.randn(6, llama.config.hidden_size))
    batch = random_batch([4, 6], llama.config.vocab_size)
    steerer = Steerer(llama, rows, layers=[-1])
    with recording(llama.model.layers[1]) as (before, _), torch.no_grad():
        llama(**batch)
    with (
        steerer.steer([[1], [2, 5]], [[2.0], [1.0, 1.0]]),
        recording(llama.model.layers[1]) as (_, after),
        torch.no_grad(),
    ):
        llama(**batch)
    ids, coeffs = steering_program(rows, [[1], [2, 5]], [[2.0], [1.0, 1.0]])
    expected = before[0].clone()
    steerkern.steer_(expected, rows.weight, ids, coeffs, mask=batch["attention_mask"].bool())
    assert torch.equal(after[0], expected)


class TupleLayer(torch.nn.Module):
    """A decoder layer in the transformers 4.x style: it returns a tuple."""

    def forward(self, hidden):
        return (hidden * 2, None)


class TupleStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([TupleLayer(), TupleLayer()])

    def forward(self, input_ids, attention_mask=None):
        hidden = torch.nn.functional.one_hot(input_ids, 16).float()
        for layer in self.layers:
            hidden = layer(hidden)[0]
        return hidden


def test_tuple_layer_outputs_are_steered_and_unknown_models_name_layers_attr():
    stack = TupleStack()
    with pytest.raises(ValueError, match="layers_attr="):
        Steerer(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.randn(3, 2), layers=[0])
    rows = torch.randn(3, 16)
    input_ids = torch.tensor([[1, 2, 3]])
    with Steerer(stack, rows, layers=[0], layers_attr="layers").steer([1], [1.0]):
        steered = stack(input_ids)
    expected = torch.nn.functional.one_hot(input_ids, 16).float() * 2 + rows[1]
    torch.testing.assert_close(steered, expected * 2)


def test_rows_come_from_the_cache_and_positions_without_a_mask():
    tokens = torch.zeros(2, 1, dtype=torch.long)

    class Cache:
        def get_seq_length(self):
            return 7

    rows = read_rows((), {"input_ids": tokens, "cache": Cache()}, need_index=True, need_columns=True)
    assert rows.real is None and rows.columns.tolist() == [7] and rows.index.tolist() == [[7], [7]]
    assert rows.generated.all()
    positions = torch.tensor([[4], [0]])
    rows = read_rows((), {"input_ids": tokens, "position_ids": positions}, need_index=True)
    assert rows.index.tolist() == [[4], [0]] and rows.generated.tolist() == [[True], [False]] and rows.columns is None


def test_rows_compute_only_what_is_asked_for():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    rows = read_rows((torch.zeros(2, 1, dtype=torch.long), mask), {})
    assert rows.batch == 2 and rows.real.tolist() == [[True], [True]]
    assert rows.index is None and rows.generated is None and rows.columns is None
    rows = read_rows((torch.zeros(2, 1, dtype=torch.long), mask), {}, need_index=True, need_columns=True)
    assert rows.index.tolist() == [[1], [2]] and rows.generated.all() and rows.columns.tolist() == [2]


def test_static_cache_compiled_generation_matches_eager(dictionary):
    # sliding_window below the prompt length: the sliding cache is full from the first step, so
    # transformers' own cache bookkeeping does not recompile the decode step at every token.
    model = tiny_gemma2(num_layers=2, sliding_window=4)
    batch = random_batch([5, 8, 3], model.config.vocab_size)
    compile_config = CompileConfig(fullgraph=True, backend="inductor", mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    steerer = Steerer(model, dictionary, layers=[1])
    with steerer.steer(CONCEPTS, FACTORS, prefix_length=1):
        eager = generate(model, batch, tokens=4)
        compiled = generate(model, batch, tokens=4, cache_implementation="static", compile_config=compile_config)
    assert hasattr(model, "_compiled_call")
    assert torch.equal(compiled, eager)


@pytest.mark.cuda
def test_bf16_steering_on_cuda_matches_the_op_on_the_captured_output(dictionary):
    model = tiny_gemma2(dtype=torch.bfloat16).cuda()
    batch = {key: value.cuda() for key, value in random_batch([5, 8, 3], model.config.vocab_size).items()}
    unhooked, _ = layer_output(model, batch)
    steerer = Steerer(model, dictionary, layers=[LAYER])
    assert steerer._layers[LAYER].dictionary.weight.device.type == "cuda"
    with steerer.steer(CONCEPTS, FACTORS, prefix_length=1):
        hooked, _ = layer_output(model, batch)
        generate(model, batch)
    ids, coeffs = steering_program(dictionary, CONCEPTS, FACTORS)
    real = batch["attention_mask"].bool() & (batch["attention_mask"].cumsum(-1) > 1)
    fused = unhooked.clone()
    steerkern.steer_(fused, dictionary.weight.cuda().bfloat16(), ids.cuda(), coeffs.cuda(), mask=real)
    assert torch.equal(hooked, fused)


@pytest.mark.cuda
def test_hooks_never_synchronize_the_host_in_a_decode_step(dictionary):
    model = tiny_gemma2(dtype=torch.bfloat16).cuda()
    layer = model.model.layers[LAYER]
    steerer = Steerer(model, dictionary, layers=[LAYER])
    mask = torch.ones(3, 9, dtype=torch.long, device="cuda")
    step = {"input_ids": torch.ones(3, 1, dtype=torch.long, device="cuda"), "attention_mask": mask}
    hidden = torch.randn(3, 1, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
    steering = steerer.steer(CONCEPTS, FACTORS, prefix_length=1, mask=torch.ones(3, 4, dtype=torch.bool))
    detection = steerer.detect(prefix_length=1)
    fused_gate = steerer.steer(CONCEPTS, FACTORS, when=steerkern.Condition(5, above=0.1, layer=LAYER))
    earlier_gates = steerer.steer(CONCEPTS, FACTORS, prefix_length=1, when=[
        steerkern.Condition(5, above=0.1, layer=LAYER - 1, scope="prompt"), None,
        steerkern.Condition(6, below=0.3, layer=LAYER - 1, scope="latched")])
    for hooks in (steering, detection, fused_gate, earlier_gates):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:  # what one decode step runs: the stack's pre-hook, then the layers' hooks
            hooks._on_model_forward(model, (), step)
            hooks._on_forward(model.model, (), step)
            if hooks is earlier_gates:
                _LayerHook(hooks._on_gate_layer, LAYER - 1)(layer, (hidden,), {}, hidden)
            _LayerHook(hooks._on_layer, LAYER)(layer, (hidden,), {}, hidden)
        finally:
            torch.cuda.set_sync_debug_mode(0)
