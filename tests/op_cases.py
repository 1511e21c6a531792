"""Shared inputs and tolerances for the op tests: fresh random data, unit-norm dictionary rows."""

from __future__ import annotations

import torch

DEVICES = ["cpu", "cuda"]

# Float32 results are compared with a relative 1e-5 and an absolute slack that grows with the
# length of the dot products; half types must land within one rounding of the float32 reference.
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def assert_hidden_close(actual, expected):
    dtype = expected.dtype
    atol = 1e-5 * max(1.0, expected.shape[-1] ** 0.5) if dtype == torch.float32 else 1e-5
    torch.testing.assert_close(actual, expected, rtol=RTOL[dtype], atol=atol)


def assert_acts_close(actual, expected, d):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, d**0.5))


def unit_rows(n, d, dtype, device, generator):
    rows = torch.randn(n, d, generator=generator, device="cpu")
    return (rows / rows.norm(dim=-1, keepdim=True)).to(dtype=dtype, device=device)


def make_program(shape, n_concepts, empty_slots, device, generator):
    """Random concept ids (some -1 when ``empty_slots``) and coefficients in AxBench's range."""
    ids = torch.randint(0, n_concepts, shape, generator=generator)
    if empty_slots:
        ids[torch.rand(shape, generator=generator) < 0.3] = -1
    coeffs = torch.empty(shape).uniform_(-5.0, 5.0, generator=generator)
    return ids.to(device), coeffs.to(device)


def poison_allocator(device, *nbytes):
    """Leave NaN in the CUDA caching allocator's free blocks of these sizes (default: a ladder from
    512 B to 64 MB), so an op that skips writing part of a fresh output cannot find the right
    values left there by an earlier call."""
    if torch.device(device).type != "cuda":
        return
    sizes = nbytes or [512 << shift for shift in range(18)]
    blocks = [torch.empty(max(size, 4) // 4, dtype=torch.float32, device=device).fill_(float("nan")) for size in sizes]
    del blocks
