"""The providers of ``steerkern bench`` at a few representative shapes, for pytest-benchmark.

Run with ``make bench`` (or ``pytest benchmarks``); not part of ``make test``. On CUDA each call is
followed by a synchronize, so small shapes carry its cost: ``steerkern bench`` times with CUDA
events and is the source of the figures in RESULTS.md.
"""

import itertools

import pytest
import torch

from steerkern import bench
from steerkern.bench import Case


def _cases(device_type):
    if device_type == "cuda":
        tokens, d, dtypes, dense_tokens = 65536, 3584, ("bfloat16",), 4096
    else:
        tokens, d, dtypes, dense_tokens = 8192, 2304, ("float32", "bfloat16"), 512
    steer = [("add", "sequence", 4), ("add", "token", 4), ("clamp", "token", 4), ("detect", "token", 4), ("add", "token", 16)]
    cases = [Case("steer", tokens, d, dtype, k=k, mode=mode, program=program) for dtype in dtypes for mode, program, k in steer]
    return cases + [Case("dense", dense_tokens, d, dtype) for dtype in dtypes]


def provider_params(device_type):
    """(case, provider) pairs, each case's providers next to each other (they share one setup);
    conftest parametrizes ``test_provider`` with them for the --bench-device."""
    params = []
    for case in _cases(device_type):
        providers = bench.DENSE_PROVIDERS if case.op == "dense" else bench.STEER_PROVIDERS
        label = case.label().replace("=", "").replace(" ", "-")
        params += [pytest.param(case, provider, id=f"{label}-{provider}") for provider in providers]
    return params


def test_provider(benchmark, workloads, device, case, provider):
    workload = workloads.get(case)
    fn, inputs = workload.providers[provider], itertools.cycle(workload.inputs)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        fn(next(inputs))
        synchronize()

    with torch.no_grad():
        call()  # the first call compiles (torch.compile) and allocates
        benchmark.group = case.label()
        benchmark(call)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(provider=provider, bytes_moved=workload.bytes_moved, gb_per_s=workload.bytes_moved / median / 1e9)
