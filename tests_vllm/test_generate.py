"""Steered generation in vllm.LLM equals each request run alone through transformers + Steerer.

A bad program is refused with vLLM's request-validation error (``VLLMValidationError``, HTTP 400
over the server; steerkern's ValueError is its cause) for that request alone.
"""

import math

import pytest
import tiny
from tiny import MIXED, NEW_TOKENS, check_against_oracle
from vllm.exceptions import VLLMValidationError

import steerkern.vllm as skv

ADD_ONLY = [request for request in MIXED if request[1] is None or request[1]["steerkern_mode"] == "add"]


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "compiled"])
def test_mixed_batch_equals_each_request_alone_in_hf(model_dir, dictionary_file, oracle, enforce_eager):
    with tiny.engine(model_dir, dictionary_file, enforce_eager=enforce_eager) as llm:
        check_against_oracle(oracle, MIXED, tiny.vllm_generate(llm, MIXED, NEW_TOKENS))
        # n > 1: every completion of a request carries its program
        check_against_oracle(oracle, MIXED[:4], tiny.vllm_generate(llm, MIXED[:4], NEW_TOKENS, n=2))


def test_preempted_requests_are_recomputed_with_their_programs(model_dir, dictionary_file, oracle):
    # 12 blocks of 16 tokens shared by the 3 layers' cache groups: 64 tokens per layer, fewer than
    # the running requests need, so the scheduler preempts some and recomputes them later.
    with tiny.engine(model_dir, dictionary_file, enforce_eager=True, max_model_len=64, num_gpu_blocks_override=12,
                     disable_log_stats=False) as llm:
        check_against_oracle(oracle, MIXED, tiny.vllm_generate(llm, MIXED, NEW_TOKENS))
        (preemptions,) = [metric.value for metric in llm.get_metrics() if metric.name == "vllm:num_preemptions"]
    assert preemptions > 0


def test_add_only_engine_adds_into_the_layer_output(model_dir, dictionary_file, oracle):
    with tiny.engine(model_dir, dictionary_file, enforce_eager=True, clamp=False) as llm:
        check_against_oracle(oracle, ADD_ONLY, tiny.vllm_generate(llm, ADD_ONLY, NEW_TOKENS))
        with pytest.raises(VLLMValidationError, match="add programs only"):
            tiny.vllm_generate(llm, [(tiny.prompt(9, 0), skv.program(1, 1.0, mode="clamp"))], NEW_TOKENS)


def test_one_layer_one_concept_program(model_dir, dictionary_file, oracle):
    requests = [(tiny.prompt(12, 8), skv.program("topic 2", 3.0)), (tiny.prompt(14, 9), None)]
    with tiny.engine(model_dir, dictionary_file, layers=[-1], enforce_eager=True) as llm:
        outputs = tiny.vllm_generate(llm, requests, NEW_TOKENS)
    check_against_oracle(oracle, requests, outputs, layers=[tiny.LAYERS - 1])


def test_one_dictionary_per_layer(model_dir, dictionary_file, hf_model, dictionary, tmp_path):
    second = tiny.build_dictionary(seed=2)
    second.save(tmp_path / "second.safetensors")
    with tiny.engine(model_dir, {1: dictionary_file, 2: str(tmp_path / "second.safetensors")}, enforce_eager=True) as llm:
        outputs = tiny.vllm_generate(llm, MIXED[1:5], NEW_TOKENS)
    per_layer = {1: dictionary, 2: second}
    differs = []
    for (tokens, program), completions in zip(MIXED[1:5], outputs):
        expected = tiny.hf_generate(hf_model, per_layer, tokens, NEW_TOKENS, program)
        assert completions[0] == expected, program
        differs.append(expected != tiny.hf_generate(hf_model, dictionary, tokens, NEW_TOKENS, program))
    assert any(differs)  # layer 2 steering with the other dictionary shows in the tokens


def test_prefix_cache_is_never_shared_across_programs(model_dir, dictionary_file, oracle):
    from vllm import SamplingParams, TokensPrompt

    tokens = tiny.prompt(48, 10)  # three full blocks of 16
    programs = [None, skv.program(3, 2.0), skv.program(3, 2.0, mode="clamp"), skv.program(3, 2.0), None]
    with tiny.engine(model_dir, dictionary_file, enforce_eager=True) as llm:
        cached = []
        for program in programs:  # one at a time: each may reuse what the earlier ones cached
            params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, extra_args=program)
            (output,) = llm.generate([TokensPrompt(prompt_token_ids=tokens)], [params], use_tqdm=False)
            assert list(output.outputs[0].token_ids) == oracle(tokens, NEW_TOKENS, program), program
            cached.append(output.num_cached_tokens)
    assert cached[0] == 0 and cached[1] == 0 and cached[2] == 0  # nothing reused across programs
    assert cached[3] > 0 and cached[4] > 0  # the same program, and unsteered requests, still share


BAD_PROGRAMS = [
    ({"steerkern_concepts": [99], "steerkern_factors": [1.0]}, "outside the dictionary"),
    ({"steerkern_concepts": ["no such topic"]}, "no such topic"),
    ({"steerkern_concepts": [1], "steerkern_factors": [math.nan]}, "finite"),
    ({"steerkern_concepts": [1], "steerkern_factors": [math.inf]}, "finite"),
    ({"steerkern_concepts": [1, 2], "steerkern_factors": [1.0]}, "2 concepts but 1 factors"),
    ({"steerkern_concepts": [1, 2, 3, 4, 5], "steerkern_factors": [1.0] * 5}, "max_concepts=4"),
    ({"steerkern_concepts": [1], "steerkern_mode": "scale"}, "mode must be"),
    ({"steerkern_concepts": [1], "steerkern_positions": "middle"}, "positions must be"),
    ({"steerkern_concepts": [1], "steerkern_prefix_length": -1}, "prefix_length"),
    ({"steerkern_concept": [1]}, "unknown program keys"),
]


def test_bad_programs_are_refused_alone_and_the_engine_keeps_serving(model_dir, dictionary_file, oracle):
    good = (tiny.prompt(15, 11), skv.program(2, 2.0))
    with tiny.engine(model_dir, dictionary_file, enforce_eager=True) as llm:
        for program, message in BAD_PROGRAMS:
            with pytest.raises(VLLMValidationError, match=message):
                tiny.vllm_generate(llm, [good, (tiny.prompt(10, 12), program)], NEW_TOKENS)
        check_against_oracle(oracle, [good], tiny.vllm_generate(llm, [good], NEW_TOKENS))


def test_a_dictionary_of_another_width_fails_engine_start(tmp_path, model_dir):
    import torch

    from steerkern import ConceptDictionary

    path = tmp_path / "narrow.safetensors"
    ConceptDictionary(torch.randn(4, tiny.HIDDEN // 2)).save(path)
    with pytest.raises(Exception, match="d=64 but the model \\(layer 1\\)'s hidden size is 128"):
        with tiny.engine(model_dir, str(path), enforce_eager=True):
            pass


def test_an_unreadable_dictionary_is_named(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match="missing.safetensors"):
        skv.engine_args(dictionary=str(missing), layers=[1])


def test_the_v2_model_runner_is_refused_naming_the_switch():
    # vLLM's CPU build cannot run the V2 runner (it needs Triton): check the model's own guard.
    from types import SimpleNamespace

    from steerkern.vllm import models

    with pytest.raises(RuntimeError, match="VLLM_USE_V2_MODEL_RUNNER=0"):
        models._install(None, SimpleNamespace(use_v2_model_runner=True), None)


def test_unsteered_requests_are_bitwise_unaffected(model_dir, dictionary_file):
    """An unsteered request's log-probabilities, next to steered ones, equal the stock engine's
    with the same batch unsteered: nothing leaks across rows, and folding the residual stream
    in a clamp engine changes no bit."""
    from vllm import LLM, SamplingParams, TokensPrompt

    def logprobs(llm, requests):
        params = [SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=0, extra_args=program)
                  for _, program in requests]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=tokens) for tokens, _ in requests], params, use_tqdm=False)
        return [[next(iter(step.values())).logprob for step in output.outputs[0].logprobs] for output in outputs]

    unsteered = [(tokens, None) for tokens, _ in MIXED[:4]]
    with tiny.engine(model_dir, dictionary_file, enforce_eager=True) as llm:
        steered = logprobs(llm, MIXED[:4])
    stock = LLM(model=model_dir, enforce_eager=True, **tiny.ENGINE_DEFAULTS)
    try:
        reference = logprobs(stock, unsteered)
    finally:
        stock.llm_engine.engine_core.shutdown()
    assert MIXED[0][1] is None and steered[0] == reference[0]
    assert steered[1] != reference[1]  # the steered neighbour did change
