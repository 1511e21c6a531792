"""The profiler reading behind `steerkern bench --vllm`'s compiled-engine row: it finds the op's
calls inside the compiled graph, one per steered layer and decode step, and one table fill per step."""

import os

import tiny

import steerkern.vllm as skv
from steerkern.vllm.profile import in_process_engine, op_time_per_decode_call


def test_the_profiler_sees_one_op_call_per_steered_layer_and_one_fill_per_decode_step(model_dir, dictionary_file):
    requests = [(tiny.prompt(8, seed), skv.program(seed, 2.0, mode="clamp" if seed % 2 else "add")) for seed in range(3)]
    new_tokens = 6
    with tiny.engine(model_dir, dictionary_file, enforce_eager=False) as llm:
        tiny.vllm_generate(llm, requests, new_tokens)  # warm-up
        timing = op_time_per_decode_call(lambda: tiny.vllm_generate(llm, requests, new_tokens), rows=len(requests))
    # The prompts are prefilled together in one step; each of the other steps decodes all three.
    assert timing["calls"] == (new_tokens - 1) * len(tiny.STEERED_LAYERS)
    assert timing["fill_calls"] == new_tokens - 1  # one table fill per step, whatever the layers
    assert 0 < timing["seconds"] < 1 and 0 < timing["fill_seconds"] < 1


def test_in_process_engine_restores_the_environment(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    seen = in_process_engine(lambda: os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
    assert seen == "0" and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
