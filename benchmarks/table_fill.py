"""The serving plugin's once-per-step table fill (``SteeringTables.fill``): the
``fill_token_tables_`` kernel against the same tables filled by the PyTorch reference (a dozen
small tensor ops), in one process, rounds interleaved.

    python benchmarks/table_fill.py [--device cpu|cuda] [--requests 32] [--rounds 400]

Steps: a decode step (one token per request) and a prefill step (a 2048-token chunk shared by the
requests), for one and three dictionaries, K = 4.
"""

from __future__ import annotations

import argparse
import os

import torch
from interleaved import time_interleaved

import steerkern
from steerkern._backend import BACKEND_ENV
from steerkern.vllm.programs import Program
from steerkern.vllm.tables import SteeringTables


def tables_with_programs(groups, requests, slots, device):
    tables = SteeringTables(groups, max_requests=256, max_tokens=8192, slots=slots, clamp=True, device=device)
    for row in range(requests):
        ids, coeffs = torch.randperm(1024)[:slots], torch.rand(slots) + 1
        tables.set_request(row, Program(tuple(ids.tolist()), tuple(coeffs.tolist())), [(ids, coeffs)] * groups,
                           prompt_length=32)
    tables.publish()
    return tables


def step(requests, tokens_each, device):
    positions = torch.arange(tokens_each, device=device).repeat(requests) + (32 if tokens_each == 1 else 0)
    query_start_loc = torch.arange(requests + 1, dtype=torch.int32, device=device) * tokens_each
    return positions, query_start_loc


def filling_with(backend, tables, positions, query_start_loc):
    def fill():
        os.environ[BACKEND_ENV] = backend
        tables.fill(positions, query_start_loc)
    return fill


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    device = torch.device(args.device)
    assert steerkern.build_info()["backend"] == "compiled", "the compiled op is not built"
    print(f"SteeringTables.fill, {args.requests} requests, K={args.k}, {device}, "
          f"{torch.get_num_threads()} thread(s), medians of {args.rounds} interleaved rounds")
    for groups in (1, 3):
        tables = tables_with_programs(groups, args.requests, args.k, device)
        for label, tokens_each in (("decode", 1), ("prefill", 2048 // args.requests)):
            positions, query_start_loc = step(args.requests, tokens_each, device)
            calls = {backend: filling_with(backend, tables, positions, query_start_loc)
                     for backend in ("auto", "reference")}
            medians = time_interleaved(calls, args.rounds, device)
            os.environ.pop(BACKEND_ENV)
            print(f"{groups} dictionar{'y' if groups == 1 else 'ies'}, {label} ({positions.shape[0]} tokens): "
                  f"kernel {1e6 * medians['auto']:.1f} us, reference {1e6 * medians['reference']:.1f} us, "
                  f"reference / kernel {medians['reference'] / medians['auto']:.1f}x")


if __name__ == "__main__":
    main()
