"""GPU checks for benchmarks/gpu_check.sh, each exiting 1 when a result is wrong.

    python benchmarks/cuda_cases.py [--detect] [--quick]
                                                   every CUDA steer kernel instantiation, small, for
                                                   compute-sanitizer (memcheck, racecheck, initcheck):
                                                   fused add, clamp over two tiles, detect, misaligned
                                                   views, wide and tiny rows, the serving table
                                                   fill; --quick only clamp and one fused add per
                                                   instantiation (and the fill); --detect
                                                   adds the dense-detect epilogues (via cuBLAS)
    python benchmarks/cuda_cases.py --bench        the fused op against the reference on slices of
                                                   the benchmark shapes (steerkern bench's targets)
    python benchmarks/cuda_cases.py --targets BENCH.json
                                                   the two GPU targets from a `steerkern bench`
                                                   JSON; exit 1 if the fused op failed in it

Inputs are made on the CPU and copied over, and the reference runs on the CPU, so that under a
sanitizer the only kernels are steerkern's (and copies).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steerkern import reference  # noqa: E402
from tests.op_cases import assert_acts_close, assert_hidden_close, make_program, unit_rows  # noqa: E402
from tests.table_cases import request_tables, step, token_buffers  # noqa: E402

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DTYPE_PAIRS = [(BF16, BF16), (BF16, FP32), (FP16, FP16), (FP16, FP32), (FP32, FP32)]
# Every packs-per-thread count for each hidden dtype (see tests/test_cuda_kernels.py).
WIDTHS = [300, 769, 1541, 2304, 3584]
N_CONCEPTS = 23


def _on_cuda(tensor, offset=0):
    storage = torch.empty(tensor.numel() + offset, dtype=tensor.dtype, device="cuda")
    view = storage[offset:].view(tensor.shape)
    view.copy_(tensor)
    return view


def steer_case(hidden_dtype, dict_dtype, d, mode, slots, program, offsets=(0, 0), gates=0, seed=0):
    """One call of the raw op on a small problem, checked against the reference on the CPU. The
    last ``gates`` slots are gate slots (above 0.3), all of them or one of them per program."""
    gen = torch.Generator().manual_seed(seed)
    batch, seq = 2, 3
    hidden = torch.randn(batch, seq, d, generator=gen).to(hidden_dtype)
    dictionary = unit_rows(N_CONCEPTS, d, dict_dtype, "cpu", gen)
    program_shape = (batch, slots) if program == "sequence" else (batch, seq, slots)
    ids, coeffs = make_program(program_shape, N_CONCEPTS, True, "cpu", gen)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    bias = 0.1 * torch.randn(N_CONCEPTS, generator=gen)
    if program == "row":
        mask = None
    bounds = gate_all = None
    if gates:
        bounds = torch.full((*program_shape, 2), math.nan)
        bounds[..., slots - gates :, 0], bounds[..., slots - gates :, 1] = 0.3, math.inf
        gate_all = torch.rand(program_shape[:-1], generator=gen) < 0.5
    expected_hidden, expected_acts = reference.steer(hidden, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias,
                                                     gate_bounds=bounds, gate_all=gate_all)
    work = _on_cuda(hidden, offsets[0])
    cuda = lambda tensor: None if tensor is None else tensor.cuda()  # noqa: E731
    acts = torch.ops.steerkern.steer_(
        work, _on_cuda(dictionary, offsets[1]), ids.cuda(), coeffs.cuda(), mode, cuda(mask), bias.cuda(),
        cuda(bounds), cuda(gate_all),
    )
    assert_acts_close(acts.cpu(), expected_acts, d)
    assert_hidden_close(work.cpu(), expected_hidden)


def sanitizer_cases(with_detect: bool, quick: bool) -> int:
    cases = []
    for h, w in DTYPE_PAIRS:
        for d in WIDTHS:
            if not quick or d == 2304:
                cases.append((h, w, d, "add", 3, "sequence", (0, 0)))  # the fused add, masked rows
            cases.append((h, w, d, "clamp", 11, "row", (0, 0)))  # two tiles, then the update pass
        cases.append((h, w, 769, "clamp", 5, "row", (0, 0), 2))  # gate slots decide the write
        if quick:
            continue
        cases.append((h, w, 2304, "add", 4, "sequence", (0, 0), 1))
        cases.append((h, w, 769, "detect", 5, "sequence", (0, 0)))
        cases.append((h, w, 2304, "add", 11, "row", (1, 1)))  # misaligned alike: 16-byte dictionary loads
        cases.append((h, w, 769, "add", 3, "row", (1, 0)))  # misaligned apart: element loads
        cases.append((h, w, 7, "clamp", 3, "row", (1, 0)))  # head and tail only
    cases.append((BF16, BF16, 12288, "clamp", 4, "row", (0, 0)))
    cases.append((FP32, FP32, 12288, "add", 4, "sequence", (0, 0)))
    cases.append((FP32, FP32, 64, "clamp", 200, "row", (0, 0)))  # more slots than threads
    failed = 0
    for index, case in enumerate(cases):
        try:
            steer_case(*case, seed=index)
        except AssertionError as error:
            failed += 1
            print(f"FAIL steer {case}: {str(error).splitlines()[0]}")
    failed += table_fill_cases()
    if with_detect:
        failed += detect_cases()
    torch.cuda.synchronize()
    print(f"{len(cases)} steer cases, the table fills{' and the detect epilogues' if with_detect else ''}: "
          f"{failed} failed")
    return 1 if failed else 0


def table_fill_cases() -> int:
    """The serving plugin's table fill on random steps (padding rows, requests without tokens, a
    one-request table), against the reference on the CPU; one call with no query_start_loc."""
    failed = 0
    gen = torch.Generator().manual_seed(2)
    for groups, max_requests, slots, index_dtype in ((1, 6, 4, torch.int32), (3, 6, 1, torch.int64),
                                                     (2, 1, 5, torch.int32)):
        for _ in range(3):
            tables = request_tables(groups, max_requests, slots, "cpu", gen)
            positions, starts = step(int(torch.randint(0, max_requests + 1, (), generator=gen)), "cpu", gen, index_dtype)
            for query_start_loc in (starts, None):
                expected = reference.token_tables(positions, query_start_loc, **tables)
                buffers = token_buffers(groups, slots, "cuda")
                torch.ops.steerkern.fill_token_tables_(
                    *buffers, positions.cuda(), None if query_start_loc is None else query_start_loc.cuda(),
                    *(table.cuda() for table in tables.values()))
                tokens = positions.shape[0]
                got = (buffers[0][:, :tokens], buffers[1][:, :tokens], buffers[2][:tokens])
                if not all(torch.equal(a.cpu(), b) for a, b in zip(got, expected)):
                    failed += 1
                    print(f"FAIL table fill: {groups} groups, {max_requests} requests, {slots} slots, "
                          f"{'no ' if query_start_loc is None else ''}query_start_loc")
    return failed


def detect_cases() -> int:
    import steerkern

    failed = 0
    gen = torch.Generator().manual_seed(1)
    for dtype in (BF16, FP32):
        hidden = torch.randn(2, 5, 64, generator=gen).to(dtype)
        weight = unit_rows(40, 64, dtype, "cpu", gen)
        threshold = 0.1 * torch.rand(40, generator=gen)
        mask = torch.rand(2, 5, generator=gen) < 0.7
        for reduce in ("none", "max"):
            kwargs = dict(threshold=threshold, mask=mask, reduce=reduce)
            expected = reference.detect(hidden, weight, **kwargs)
            got = steerkern.detect(hidden.cuda(), weight.cuda(), **{k: v.cuda() if isinstance(v, torch.Tensor) else v
                                                                    for k, v in kwargs.items()})
            try:
                # Loose: this run looks for memory errors; tests/ checks detect's precision.
                torch.testing.assert_close(got.cpu(), expected, rtol=2e-2, atol=5e-2)
            except AssertionError as error:
                failed += 1
                print(f"FAIL detect {dtype} {reduce}: {str(error).splitlines()[0]}")
    return failed


def bench_shape_cases() -> int:
    """The fused op on the inputs `steerkern bench` times, against the reference on three
    sequences of each (the first, the middle, the last)."""
    import steerkern
    from steerkern import bench

    assert steerkern.build_info()["compiled_with_cuda"], "the CUDA kernels are not built"
    device = torch.device("cuda")
    failed = 0
    cases = bench.build_cases("targets", device, ops=("steer",))
    for case in cases:
        workload = bench.prepare(case, device, providers=["steerkern"])
        x = workload.inputs[0]
        hidden, ids, coeffs = x["hidden"], x["ids"], x["coeffs"]
        batch = hidden.shape[0]
        picks = sorted({0, batch // 2, batch - 1})
        originals = [hidden[b : b + 1].clone() for b in picks]
        acts = workload.providers["steerkern"](x)
        for b, original in zip(picks, originals):
            expected_hidden, expected_acts = reference.steer(original, workload.dictionary, ids[b : b + 1], coeffs[b : b + 1], mode=case.mode)
            try:
                assert_acts_close(acts[b : b + 1], expected_acts, case.d)
                assert_hidden_close(hidden[b : b + 1], expected_hidden)
            except AssertionError as error:
                failed += 1
                print(f"FAIL {case.label()} sequence {b}: {str(error).splitlines()[0]}")
                break
        del workload, x, hidden, acts
        torch.cuda.empty_cache()
    print(f"{len(cases)} benchmark shapes checked on slices: {failed} failed")
    return 1 if failed else 0


def targets(path: str) -> int:
    """The GPU targets of the fused steer op from one `steerkern bench` run: bfloat16 at least 85%
    of the in-place pass at T >= 65536 for K <= 16, and at most 6 µs a call at the decode shape
    replayed from a CUDA graph. Exit 1 when the fused op failed in any case of the run."""
    from steerkern import bench

    with open(path, encoding="utf-8") as file:
        results = json.load(file)["cases"]
    bandwidth, decode = [], []
    for result in results:
        case, ratios = result["case"], result.get("ratios", {})
        if case["op"] != "steer" or case["dtype"] != "bfloat16":
            continue
        if case["graph"]:
            median = result.get("providers", {}).get("steerkern", {}).get("median_s")
            if median is not None:
                decode.append((result["label"], median * 1e6))
        elif case["tokens"] >= 65536 and case["k"] <= 16 and "steerkern_over_roof" in ratios:
            bandwidth.append((result["label"], 100 / ratios["steerkern_over_roof"]))
    for label, percent in bandwidth:
        print(f"  {percent:5.1f}% of roof  {label}")
    if bandwidth:
        worst = min(percent for _, percent in bandwidth)
        print(f"target bf16 T>=65536 K<=16: worst {worst:.1f}% of the in-place pass (target >= 85%): "
              f"{'met' if worst >= 85 else 'NOT met'}")
    else:
        print("target bf16 T>=65536 K<=16: no figure in the run")
    for label, micros in decode:
        print(f"target decode under graph replay: {micros:.2f} µs a call (target <= 6 µs): "
              f"{'met' if micros <= 6 else 'NOT met'}  [{label}]")
    if not decode:
        print("target decode under graph replay: no figure in the run")
    broken = bench.fused_failures(results)
    for line in broken:
        print(f"FUSED OP FAILED: {line}")
    return 1 if broken or not bandwidth or not decode else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detect", action="store_true", help="add the dense-detect epilogues")
    parser.add_argument("--quick", action="store_true", help="one steer case per instantiation only")
    parser.add_argument("--bench", action="store_true", help="check the benchmark shapes on slices")
    parser.add_argument("--targets", metavar="BENCH.json", help="report the GPU targets of a bench run")
    args = parser.parse_args()
    if args.targets:
        return targets(args.targets)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    if args.bench:
        return bench_shape_cases()
    return sanitizer_cases(args.detect, args.quick)


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
