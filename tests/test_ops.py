"""steer_ and detect against the reference on fresh random inputs, over a pairwise grid of
modes x dtypes x program kinds x masks x empty slots x odd sizes, plus opcheck and compile."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import steerkern
from steerkern import reference
from tests.op_cases import assert_acts_close, assert_hidden_close, make_program, poison_allocator, unit_rows
from tests.pairwise import all_pairs, uncovered_pairs

AXES = {
    "mode": ["add", "clamp", "detect"],
    "dtype": [torch.float32, torch.bfloat16, torch.float16],
    "program": ["per_sequence", "per_row"],
    "masked": [False, True],
    "empty_slots": [False, True],
    "d": [1, 7, 769, 2304, 3584],
    "rows": [1, 3, 4097],
    "slots": [1, 3, 64],
    "dictionary_fp32": [False, True],
    "bias": [False, True],
}


def _small_enough(case):
    # The reference gathers K dictionary rows per row: keep its (rows, K, d) tensor modest.
    return case["rows"] * case["slots"] * case["d"] <= 4097 * 3 * 2304


GRID = all_pairs(AXES, _small_enough)


def test_grids_cover_every_pair():
    assert uncovered_pairs(GRID, AXES, _small_enough) == []
    assert all(_small_enough(case) for case in GRID)
    assert uncovered_pairs(DETECT_GRID, DETECT_AXES) == []


def _case_id(case):
    return "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in case.items())


def _inputs(case, device, seed):
    gen = torch.Generator().manual_seed(seed)
    rows, d, slots, dtype = case["rows"], case["d"], case["slots"], case["dtype"]
    n_concepts = 97
    batch = 3 if case["program"] == "per_sequence" and rows >= 3 else 1
    seq = max(rows // batch, 1)
    hidden = torch.randn(batch, seq, d, generator=gen).to(dtype=dtype, device=device)
    dict_dtype = torch.float32 if case["dictionary_fp32"] else dtype
    dictionary = unit_rows(n_concepts, d, dict_dtype, device, gen)
    program_shape = (batch, slots) if case["program"] == "per_sequence" else (batch, seq, slots)
    ids, coeffs = make_program(program_shape, n_concepts, case["empty_slots"], device, gen)
    mask = (torch.rand(batch, seq, generator=gen) < 0.6).to(device) if case["masked"] else None
    bias = (0.1 * torch.randn(n_concepts, generator=gen)).to(device) if case["bias"] else None
    return hidden, dictionary, ids, coeffs, mask, bias


def _check_steer(case, device, seed=0):
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(case, device, seed)
    original = hidden.clone()
    # The op runs first, on a poisoned allocator: its output cannot inherit the reference's.
    poison_allocator(device, 4 * ids.shape[-1] * original[..., 0].numel())
    acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mode=case["mode"], mask=mask, bias=bias)
    expected_hidden, expected_acts = reference.steer(
        original, dictionary, ids, coeffs, mode=case["mode"], mask=mask, bias=bias
    )

    assert acts.dtype == torch.float32 and acts.shape == (*hidden.shape[:-1], ids.shape[-1])
    assert_acts_close(acts, expected_acts, case["d"])
    assert_hidden_close(hidden, expected_hidden)
    if case["empty_slots"]:
        assert (acts[(ids if ids.dim() == 3 else ids[:, None, :].expand_as(acts)) < 0] == 0).all()
    if case["mode"] == "detect":
        assert torch.equal(hidden, original)
    if mask is not None:  # rows outside the mask are bitwise untouched
        assert torch.equal(hidden[~mask], original[~mask])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_steer_matches_reference(case, device):
    _check_steer(case, device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_steer_fresh_inputs_each_seed(device):
    # The same case on several fresh draws: a kernel that happens to match one input cannot pass.
    case = dict(GRID[0], mode="clamp", d=769, rows=9, slots=3, program="per_row", masked=True, empty_slots=True)
    for seed in range(1, 4):
        _check_steer(case, device, seed)


def test_calls_of_other_sizes_leave_nothing_behind():
    # The CPU kernel keeps its buffers from call to call: a call with more slots, a wider d or
    # another program kind must not leak into the next, smaller one.
    base = dict(GRID[0], dtype=torch.float32, masked=True, empty_slots=True, dictionary_fp32=False, bias=True)
    for d, slots, program, mode in [(2053, 6, "per_row", "add"), (7, 3, "per_row", "clamp"),
                                    (2053, 2, "per_sequence", "add"), (771, 9, "per_row", "detect")]:
        _check_steer(dict(base, d=d, slots=slots, program=program, mode=mode, rows=39), "cpu", seed=d + slots)


def test_add_is_exact_patch_for_one_concept():
    # h' = h + α·w exactly in float32 for a single slot with no mask.
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 4, 33, generator=gen)
    dictionary = torch.randn(5, 33, generator=gen)
    original = hidden.clone()
    steerkern.steer_(hidden, dictionary, torch.tensor([[2], [4]]), torch.tensor([[1.5], [-0.5]]))
    assert torch.equal(hidden[0], original[0] + 1.5 * dictionary[2])
    assert torch.equal(hidden[1], original[1] + -0.5 * dictionary[4])


def test_nan_propagates_like_reference():
    hidden = torch.randn(4, 16)
    hidden[1, 3] = float("nan")
    dictionary = unit_rows(6, 16, torch.float32, "cpu", torch.Generator().manual_seed(1))
    ids, coeffs = torch.tensor([[0, 1]] * 4), torch.ones(4, 2)
    mask = torch.tensor([True, True, False, True])
    for mode in ("add", "clamp"):
        expected_hidden, expected_acts = reference.steer(hidden, dictionary, ids, coeffs, mode=mode, mask=mask)
        work = hidden.clone()
        acts = steerkern.steer_(work, dictionary, ids, coeffs, mode=mode, mask=mask)
        torch.testing.assert_close(work, expected_hidden, equal_nan=True)
        torch.testing.assert_close(acts, expected_acts, equal_nan=True)


def test_non_contiguous_hidden_is_written_back():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(6, 40, generator=gen)
    hidden = base[:, ::2]  # (6, 20), stride 2
    dictionary = unit_rows(8, 20, torch.float32, "cpu", gen)
    ids, coeffs = make_program((6, 2), 8, False, "cpu", gen)
    expected, _ = reference.steer(hidden, dictionary, ids, coeffs)
    untouched = base[:, 1::2].clone()
    steerkern.steer_(hidden, dictionary, ids, coeffs)
    assert_hidden_close(hidden, expected)
    assert torch.equal(base[:, 1::2], untouched)


DETECT_AXES = {
    "dtype": [torch.float32, torch.bfloat16, torch.float16],
    "reduce": ["none", "max"],
    "encoder": [False, True],
    "threshold": [False, True],
    "masked": [False, True],
    "shape": [(1, 1, 7), (3, 5, 769), (2, 33, 64), (40, 16)],
    "dictionary_fp32": [False, True],
}
DETECT_GRID = all_pairs(DETECT_AXES)


def _check_detect(case, device):
    gen = torch.Generator().manual_seed(3)
    dtype, shape = case["dtype"], case["shape"]
    d, n_concepts = shape[-1], 211
    hidden = torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)
    weight_dtype = torch.float32 if case["dictionary_fp32"] else dtype
    dictionary = unit_rows(n_concepts, d, weight_dtype, device, gen)
    encoder = unit_rows(n_concepts, d, weight_dtype, device, gen).T.contiguous() if case["encoder"] else None
    bias = (0.1 * torch.randn(n_concepts, generator=gen)).to(device)
    threshold = (0.2 * torch.rand(n_concepts, generator=gen)).to(device) if case["threshold"] else None
    mask = (torch.rand(shape[:-1], generator=gen) < 0.7).to(device) if case["masked"] else None
    kwargs = dict(bias=bias, threshold=threshold, encoder=encoder, mask=mask, reduce=case["reduce"])
    poison_allocator(device)
    scores = steerkern.detect(hidden, dictionary, **kwargs)
    expected = reference.detect(hidden, dictionary, **kwargs)
    assert scores.dtype == torch.float32 and scores.shape == expected.shape
    # Pre-activations are accumulated and kept in float32 whatever the inputs' dtype.
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5 * d**0.5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("case", DETECT_GRID, ids=_case_id)
def test_detect_matches_reference(case, device):
    _check_detect(case, device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["add", "clamp", "detect"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("program", ["per_sequence", "per_row"])
def test_blocks_and_chunks_with_partial_masks(device, mode, dtype, program):
    # Rows are processed in blocks and d in chunks: a mask that cuts through a block, a sequence
    # length that leaves a remainder, a d that leaves a short last chunk, and groups of slots
    # beyond the first must all come out right.
    case = dict(GRID[0], mode=mode, dtype=dtype, program=program, masked=True, empty_slots=True,
                d=2 * 1024 + 37, rows=3 * 13, slots=6, dictionary_fp32=False, bias=True)
    _check_steer(case, device, seed=4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rows_are_widened_and_rounded_exactly(device, dtype):
    # Every finite value of the dtype, steered by zero, comes back as it was (-0 as +0); rows of
    # zeros steered by c along a row of ones hold c rounded as torch rounds it, over the
    # subnormal, normal and overflowing ranges.
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = every[torch.isfinite(every)]
    hidden = finite[: finite.numel() // 8 * 8].reshape(-1, 8).to(device)
    ones = torch.ones(1, 8, device=device)
    ids = torch.zeros(hidden.shape[0], 1, dtype=torch.long, device=device)
    expected = hidden.float() + 0.0
    steerkern.steer_(hidden, ones, ids, torch.zeros(hidden.shape[0], 1, device=device), mode="add")
    assert torch.equal(hidden.float(), expected)

    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.exp2(torch.empty(20000).uniform_(-30.0, 17.0, generator=generator))
    halfway = torch.tensor([65504.0, 65519.0, 65520.0, 65536.0, 2.0**-24 * 1.5, 2.0**-25, 2.0**-14 * (1 - 2.0**-11)])
    coeffs = torch.cat([magnitudes, halfway]) * torch.where(torch.rand(20007, generator=generator) < 0.5, -1.0, 1.0)
    zeros = torch.zeros(coeffs.numel(), 8, dtype=dtype, device=device)
    ids = torch.zeros(coeffs.numel(), 1, dtype=torch.long, device=device)
    steerkern.steer_(zeros, ones, ids, coeffs[:, None].to(device), mode="add")
    assert torch.equal(zeros, coeffs.to(dtype)[:, None].expand(-1, 8).to(device))


def _pooled_call(mode, dtype, d, rows, program_shape, seed):
    """A half-precision dictionary of 300 rows of which a call draws on 6, with a bias, empty and
    out-of-range slots: the shape of a batch sharing a pool of concepts."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = unit_rows(300, d, dtype, "cpu", generator)
    pool = torch.randperm(300, generator=generator)[:6]
    ids = pool[torch.randint(0, 6, program_shape, generator=generator)]
    ids.view(-1)[:2] = torch.tensor([-1, 300])  # the raw op reads an id out of range as an empty slot
    coeffs = torch.empty(program_shape).uniform_(-5.0, 5.0, generator=generator)
    hidden = torch.randn(*rows, d, generator=generator).to(dtype)
    bias = torch.randn(300, generator=generator)
    return hidden, dictionary, ids, coeffs, bias


@pytest.mark.parametrize("mode", ["add", "clamp", "detect"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [2304, 257])
def test_rows_sharing_a_few_concepts_steer_as_each_row_alone(mode, dtype, d):
    # A call whose rows draw on a few rows of a half-precision dictionary (which the CPU kernel
    # reads through a float32 copy of those rows) gives every row, bit for bit, what a call of
    # that row alone gives (which reads the dictionary as it is).
    hidden, dictionary, ids, coeffs, bias = _pooled_call(mode, dtype, d, (64,), (64, 9), seed=5)
    together = hidden.clone()
    acts = steerkern.steer_(together, dictionary, ids, coeffs, mode=mode, bias=bias, check_ids=False)
    alone = hidden.clone()
    acts_alone = torch.cat([steerkern.steer_(alone[t : t + 1], dictionary, ids[t : t + 1], coeffs[t : t + 1],
                                             mode=mode, bias=bias, check_ids=False) for t in range(64)])
    assert torch.equal(together, alone)
    assert torch.equal(acts, acts_alone)


@pytest.mark.parametrize("mode", ["add", "clamp", "detect"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, program_shape", [((64,), (64, 9)), ((2, 64), (2, 9)), ((2, 3), (2, 4)), ((3,), (3, 9))],
                         ids=["pooled rows", "pooled sequences", "few sequences", "few rows"])
def test_a_half_precision_dictionary_steers_as_its_float32_copy(mode, dtype, rows, program_shape):
    # Calls that share a few dictionary rows among many reads and calls that do not (the last
    # two), per row and per sequence: the same results as the dictionary widened beforehand.
    if _reads_half_dictionaries_natively():
        pytest.skip("AVX-512 copies read half-precision dictionaries natively, in their own order; "
                    "test_the_widening_copies_on_an_avx512_machine runs this under avx2")
    hidden, dictionary, ids, coeffs, bias = _pooled_call(mode, dtype, 2304, rows, program_shape, seed=6)
    half, widened = hidden.clone(), hidden.clone()
    acts = steerkern.steer_(half, dictionary, ids, coeffs, mode=mode, bias=bias, check_ids=False)
    acts_widened = steerkern.steer_(widened, dictionary.float(), ids, coeffs, mode=mode, bias=bias, check_ids=False)
    assert torch.equal(half, widened)
    assert torch.equal(acts, acts_widened)


def _reads_half_dictionaries_natively():
    return steerkern.build_info()["cpu_isa"].startswith("avx512")


def test_the_widening_copies_on_an_avx512_machine():
    # The float32-copy equality is what the widening copies (below AVX-512) rely on; on an
    # AVX-512 machine it is checked with the kernel capped at avx2, in a process of its own.
    if not _reads_half_dictionaries_natively():
        pytest.skip("this machine runs a widening copy: the test above checks it in this process")
    root = os.path.dirname(os.path.dirname(__file__))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
               f"{__file__}::test_a_half_precision_dictionary_steers_as_its_float32_copy"]
    done = subprocess.run(command, env={**os.environ, "STEERKERN_CPU_ISA": "avx2"}, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "24 passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_detect_threshold_sees_the_unrounded_pre_activation(device, dtype):
    # 100 + 0.21875 rounds to 100 in bfloat16, below the threshold of 100.1: the JumpReLU must
    # see the float32 sum, as the reference does.
    d = 64
    hidden = torch.zeros(3, d, dtype=dtype, device=device)
    hidden[:, 0], hidden[:, 1] = 100.0, 0.21875
    encoder = torch.zeros(d, 2, dtype=dtype, device=device)
    encoder[:2, 0] = 1.0
    encoder[0, 1] = 1.0
    threshold = torch.tensor([100.1, 99.0], device=device)
    for reduce in ("none", "max"):
        scores = steerkern.detect(hidden, None, encoder=encoder, threshold=threshold, reduce=reduce)
        expected = reference.detect(hidden, None, encoder=encoder, threshold=threshold, reduce=reduce)
        assert expected[..., 0].eq(100.21875).all()
        torch.testing.assert_close(scores, expected, rtol=0, atol=0)


def test_detect_converts_the_input_a_chunk_at_a_time():
    # With few concepts the GEMM output of a chunk is small, but the float32 copy of the chunk's
    # rows is not: the chunk size must count it (T rows of d = 4096 would take 1 GiB at once).
    hidden = torch.randn(1 << 16, 4096, dtype=torch.bfloat16)
    dictionary = unit_rows(4, 4096, torch.float32, "cpu", torch.Generator().manual_seed(8))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        scores = steerkern.detect(hidden, dictionary, reduce="max")
    largest = max(event.self_cpu_memory_usage for event in prof.events())
    assert 64 << 20 <= largest <= 300 << 20, f"one allocation of {largest >> 20} MiB"
    torch.testing.assert_close(scores, reference.detect(hidden, dictionary, reduce="max"), rtol=1e-5, atol=1e-3)
