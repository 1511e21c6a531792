"""What one more row costs the fused op's inner loops, on one thread, with the rows in L2.

    python benchmarks/row_cost.py [--d 2304] [--threads 1]

Times the compiled op on 64 and 128 rows of a per-token program (concepts drawn from 32 rows of a
16384-row dictionary) and divides the difference by 64, which removes the per-call overhead. Best
of five timed batches each. A tool for comparing kernel changes, not a target figure.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import steerkern  # noqa: F401  (registers torch.ops.steerkern)

# (mode, steering slots, gate slots): "add K=4+1" adds one gate slot to K = 4 (about half the rows
# pass it), to be read against "add K=5", the same dots without a gate.
CASES = [("detect", 4, 0), ("add", 4, 0), ("add", 5, 0), ("add", 4, 1), ("clamp", 4, 0), ("add", 16, 0)]


def seconds_per_call(hidden, dictionary, ids, coeffs, mode, bounds, calls=200):
    op = torch.ops.steerkern.steer_
    for _ in range(10):
        op(hidden, dictionary, ids, coeffs, mode, None, None, bounds)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(calls):
            op(hidden, dictionary, ids, coeffs, mode, None, None, bounds)
        best = min(best, (time.perf_counter() - began) / calls)
    return best


def row_cost(dtype, mode, k, gates, d, generator):
    dictionary = torch.randn(16384, d, generator=generator).to(dtype)
    pool = torch.randperm(16384, generator=generator)[:32]
    times = []
    for rows in (64, 128):
        hidden = torch.randn(rows, d, generator=generator).to(dtype)
        ids = pool[torch.randint(32, (rows, k + gates), generator=generator)]
        coeffs = torch.rand(rows, k + gates, generator=generator)
        bounds = None
        if gates:
            bounds = torch.full((rows, k + gates, 2), math.nan)
            bounds[:, k:, 0], bounds[:, k:, 1] = 0.02, math.inf
        times.append(seconds_per_call(hidden, dictionary, ids, coeffs, mode, bounds))
    return (times[1] - times[0]) / 64


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=2304, help="hidden size (default 2304)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"steerkern {steerkern.build_info()['cpu_isa']}, d={args.d}, {args.threads} thread(s), per-token programs")
    for dtype in (torch.float32, torch.bfloat16):
        for mode, k, gates in CASES:
            cost = row_cost(dtype, mode, k, gates, args.d, generator)
            slots = f"{k}+{gates}" if gates else str(k)
            print(f"{str(dtype).removeprefix('torch.'):>9} {mode:>6} K={slots:<4} {cost * 1e9:7.0f} ns per row")


if __name__ == "__main__":
    main()
