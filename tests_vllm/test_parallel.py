"""Tensor and pipeline parallelism on this machine's two cores, against the same oracle.

Each tensor-parallel rank steers its full, all-reduced copy of the activations with the same
tables; each pipeline stage steers the layers it holds, with only their dictionaries.
"""

import tiny
from tiny import MIXED, NEW_TOKENS, check_against_oracle

# Fewer requests than test_generate's batch: these engines start worker processes.
REQUESTS = [MIXED[0], MIXED[2], MIXED[3], MIXED[6]]


def test_tensor_parallel(model_dir, dictionary_file, oracle, monkeypatch):
    # One core per rank; the default binding asks for a NUMA node per rank.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    with tiny.engine(model_dir, dictionary_file, tensor_parallel_size=2, distributed_executor_backend="mp",
                     enforce_eager=True) as llm:
        check_against_oracle(oracle, REQUESTS, tiny.vllm_generate(llm, REQUESTS, NEW_TOKENS))


def test_pipeline_parallel(model_dir, dictionary_file, oracle, monkeypatch):
    # Compiled with inductor: in eager mode, and with VLLM_CPU_CI_ENV's compile settings, vLLM's
    # CPU runner skips the warm-up that allocates the tensors passed between stages. Layers 0-1 run
    # on the first stage, layer 2 on the second: one steered layer each.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    monkeypatch.setenv("VLLM_CPU_CI_ENV", "0")
    with tiny.engine(model_dir, dictionary_file, pipeline_parallel_size=2, distributed_executor_backend="mp",
                     enforce_eager=False) as llm:
        check_against_oracle(oracle, REQUESTS, tiny.vllm_generate(llm, REQUESTS, NEW_TOKENS))
