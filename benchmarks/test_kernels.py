"""The providers of ``steerkern bench`` at its targets shapes, for pytest-benchmark.

Run with ``make bench`` (or ``pytest benchmarks``); not part of ``make test``. On CUDA each call is
followed by a synchronize, so small shapes carry its cost: ``steerkern bench`` times with CUDA
events and is the source of the figures in RESULTS.md.
"""

import itertools

import pytest
import torch

from steerkern import bench

PROVIDERS = {"steer": bench.STEER_PROVIDERS, "gated": bench.GATED_PROVIDERS, "dense": bench.DENSE_PROVIDERS}


def _cases(device_type):
    """The `steerkern bench` targets preset; on CUDA its d = 3584 shapes at T = 65536, the dense
    one and the gated ones, which keeps the suite to a few minutes."""
    cases = bench.build_cases("targets", torch.device(device_type))
    if device_type == "cuda":
        cases = [case for case in cases if case.op != "steer" or (case.d == 3584 and case.tokens == 65536)]
        cases = [case for case in cases if case.op != "dense" or case.d == 3584]
    return cases


def provider_params(device_type):
    """(case, provider) pairs, each case's providers next to each other (they share one setup);
    conftest parametrizes ``test_provider`` with them for the --bench-device."""
    params = []
    for case in _cases(device_type):
        label = case.label().replace("=", "").replace(" ", "-").replace("%", "pct")
        params += [pytest.param(case, provider, id=f"{label}-{provider}") for provider in PROVIDERS[case.op]]
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
