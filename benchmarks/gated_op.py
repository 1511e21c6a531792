"""What a gate costs the fused op: steer_ with G gate slots appended to a program of K steering
slots (one pass: the row is read once and written where the gate passes), against the same
steering without a gate, and against detect-then-steer in two passes (a detect-mode call for the
gate concepts, thresholds as tensor ops, a masked steer call).

    python benchmarks/gated_op.py [--device cpu|cuda] [--tokens 8192] [--d 2304] [--k 4] [--gates 1]

Prints, per dtype, each variant's median time over interleaved rounds and the two ratios.
"""

from __future__ import annotations

import argparse
import math

import torch
from interleaved import time_interleaved

import steerkern


def inputs(tokens, d, k, gates, dtype, device, concepts=16384, pool=32, seed=0):
    generator = torch.Generator(device=device).manual_seed(seed)
    random = {"generator": generator, "device": device}
    dictionary = torch.randn(concepts, d, **random)
    dictionary = (dictionary / dictionary.norm(dim=1, keepdim=True)).to(dtype)
    chosen = torch.randperm(concepts, **random)[:pool]
    ids = chosen[torch.randint(pool, (tokens, k + gates), **random)]
    coeffs = torch.rand(tokens, k + gates, **random) * 4 + 0.5
    bounds = torch.full((tokens, k + gates, 2), math.nan, device=device)
    bounds[:, k:, 0], bounds[:, k:, 1] = 0.02, math.inf  # about half the rows pass
    hidden = torch.randn(tokens, d, **random).to(dtype)
    return hidden, dictionary, ids, coeffs, bounds


def variants(hidden, dictionary, ids, coeffs, bounds, k):
    steer_ids, steer_coeffs = ids[:, :k].contiguous(), coeffs[:, :k].contiguous()
    gate_ids, gate_coeffs = ids[:, k:].contiguous(), coeffs[:, k:].contiguous()
    above = bounds[:, k:, 0]
    op = torch.ops.steerkern.steer_

    def two_pass():
        acts = op(hidden, dictionary, gate_ids, gate_coeffs, "detect", None, None)
        op(hidden, dictionary, steer_ids, steer_coeffs, "add", (acts > above).any(-1), None)

    return {
        "gated, one pass": lambda: op(hidden, dictionary, ids, coeffs, "add", None, None, bounds, None),
        "unconditional": lambda: op(hidden, dictionary, steer_ids, steer_coeffs, "add", None, None),
        "detect then steer": two_pass,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--d", type=int, default=2304)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--gates", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    device = torch.device(args.device)
    assert steerkern.build_info()["backend"] == "compiled", "the compiled op is not built"
    print(f"T={args.tokens} d={args.d} K={args.k} + {args.gates} gate slot(s), per-token programs, {device}")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        hidden, dictionary, ids, coeffs, bounds = inputs(args.tokens, args.d, args.k, args.gates, dtype, device)
        medians = time_interleaved(variants(hidden, dictionary, ids, coeffs, bounds, args.k), args.rounds, device)
        gated = medians["gated, one pass"]
        cells = ", ".join(f"{label} {1e3 * seconds:.2f} ms" for label, seconds in medians.items())
        print(f"{name}: {cells}; gated / unconditional {gated / medians['unconditional']:.2f}x, "
              f"detect-then-steer / gated {medians['detect then steer'] / gated:.2f}x")


if __name__ == "__main__":
    main()
