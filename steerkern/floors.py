"""The floors a steer case cannot beat on this machine, measured in the same run as the op.

- memory: the warm in-place pass over hidden's bytes (the ``roof`` provider), the time to read and
  write the activations once;
- compute: the FLOPs the mode needs (``2·K·d`` per row for the dots, as much again for an
  update) at the peak a large matmul reaches in the dtype the kernel computes them in: the update
  in float32, the dots too except for bfloat16 rows on CPUs with AVX512-BF16, whose kernel takes
  them with bfloat16 dot-product instructions (twice the float32 rate or more);
- gather: the dictionary elements the rows read (``K·d`` per row) at the read bandwidth of the
  cache that holds the concept pool (a buffer of the pool's size, read over and over).

The binding floor is the largest; ``op / floor`` says how far the op is from it.
"""

from __future__ import annotations

import functools
import math
import time

import torch

from ._backend import build_info

FLOORS = ("memory", "compute", "gather")


def _best_seconds(fn, device, repeats=5, min_s=0.02) -> float:
    """Best time of one call, each timed over enough calls to last ``min_s``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    calls, best = 1, math.inf
    for _ in range(repeats):
        sync()
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        elapsed = time.perf_counter() - began
        best = min(best, elapsed / calls)
        calls = max(calls, math.ceil(min_s / max(elapsed / calls, 1e-9)))
    return best


@functools.lru_cache(maxsize=None)
def fma_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square ``dtype`` matmul large enough to be compute-bound."""
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / _best_seconds(lambda: a @ b, device)


@functools.lru_cache(maxsize=None)
def read_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of reading a buffer of ``nbytes`` over and over, from whatever cache holds it. One
    call sums a stride-0 expansion of the buffer (at least 64 MiB of reads), so the cost of a
    call does not count against the bandwidth."""
    buffer = torch.ones(max(nbytes // 4, 1024), device=device)
    repeats = max(1, (64 << 20) // buffer.nbytes)
    reads = buffer.expand(repeats, -1)
    return repeats * buffer.nbytes / _best_seconds(reads.sum, device)


def dots_dtype(case, device: torch.device) -> torch.dtype:
    """The dtype the kernel takes a steer case's dots in: bfloat16 for bfloat16 rows and dictionary
    where the CPU kernel runs its AVX512-BF16 path, float32 otherwise (the update always is)."""
    native = device.type == "cpu" and build_info()["cpu_isa"] == "avx512bf16"
    return torch.bfloat16 if native and case.dtype == "bfloat16" else torch.float32


def steer_floors(case, roof_s: float, device: torch.device) -> dict:
    """Seconds of each floor for a steer case, given the roof provider's time."""
    batch, seq_len, d = case.shape
    rows = batch * seq_len
    dict_bytes = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    dot_flops = 2 * rows * case.k * d
    update_flops = 0 if case.mode == "detect" else dot_flops
    compute_s = (dot_flops / fma_peak_flops(device, dots_dtype(case, device))
                 + update_flops / fma_peak_flops(device, torch.float32))
    gathered = rows * case.k * d * dict_bytes
    pool_bytes = case.pool * d * dict_bytes
    seconds = (roof_s, compute_s, gathered / read_bandwidth(device, pool_bytes))
    return dict(zip(FLOORS, seconds))


def binding(floors: dict) -> tuple[str, float]:
    """The floor that binds (the slowest) and its seconds; NaN floors are left out."""
    known = {name: value for name, value in floors.items() if not math.isnan(value)}
    if not known:
        return "n/a", math.nan
    name = max(known, key=known.get)
    return name, known[name]
