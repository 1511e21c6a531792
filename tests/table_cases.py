"""Random steps of the serving plugin's tables, for ``tests/test_token_tables.py`` and the GPU
check (``benchmarks/cuda_cases.py``): per-request tables, a step's positions and
``query_start_loc``, and poisoned per-token tables for the op to fill."""

from __future__ import annotations

import torch

MAX_TOKENS = 48


def request_tables(groups, max_requests, slots, device, gen):
    """Random per-request tables: ids (empty slots included), coefficients, every position kind."""
    return {
        "request_ids": torch.randint(-1, 30, (groups, max_requests, slots), generator=gen).to(device),
        "request_coeffs": torch.randn(groups, max_requests, slots, generator=gen).to(device),
        "request_kind": torch.randint(0, 4, (max_requests,), generator=gen, dtype=torch.int32).to(device),
        "request_prefix": torch.randint(0, 4, (max_requests,), generator=gen).to(device),
        "request_prompt": torch.randint(1, 12, (max_requests,), generator=gen).to(device),
        "request_clamped": (torch.rand(max_requests, generator=gen) < 0.5).to(device),
    }


def step(requests, device, gen, index_dtype=torch.int32):
    """positions and query_start_loc of a step: 0 to 6 tokens per request, then 0 to 3 padding rows."""
    counts = torch.randint(0, 7, (requests,), generator=gen)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    tokens = int(starts[-1]) + int(torch.randint(0, 4, (), generator=gen))
    positions = torch.randint(0, 16, (tokens,), generator=gen)
    return positions.to(device), starts.to(device=device, dtype=index_dtype)


def token_buffers(groups, slots, device):
    """The per-token tables, poisoned: the op must write every value of the step's rows."""
    return (torch.full((groups, MAX_TOKENS, slots), 777, dtype=torch.long, device=device),
            torch.full((groups, MAX_TOKENS, slots), float("nan"), device=device),
            torch.ones(MAX_TOKENS, dtype=torch.bool, device=device))
