"""The CUDA kernels against the reference, on a GPU (every test is marked ``cuda``).

Every instantiation of the steer kernel on the production path (hidden dtype x dictionary dtype x
packs per thread) in add and clamp, with per-sequence and per-row programs, masks, bias and empty
slots; the slot counts on either side of a tile and beyond the threads of a block; tiny, wide and
misaligned rows; an input of more than 2^31 elements; and the op's behaviour on CUDA: NaN, exact
patches, non-contiguous arguments, streams, graphs, torch.compile and its errors.

The cases are listed explicitly (a pairwise grid cannot promise these combinations). Each call
runs the raw op ``torch.ops.steerkern.steer_``, which has no reference fallback, first, on an
allocator poisoned with NaN, then the reference on a copy of the inputs. Imports only torch,
pytest and the package: the GPU machine's image has nothing else.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import steerkern
from steerkern import reference
from tests.op_cases import assert_acts_close, assert_hidden_close, make_program, poison_allocator, unit_rows

pytestmark = pytest.mark.cuda

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# (hidden dtype, dictionary dtype): every pair the kernel is instantiated for.
DTYPE_PAIRS = [(BF16, BF16), (BF16, FP32), (FP16, FP16), (FP16, FP32), (FP32, FP32)]
# Widths that reach every packs-per-thread instantiation. 16-bit hidden: 300, 769 -> 1 pack a
# thread, 1541 -> 2, 2304, 3584 -> 4; float32 hidden: 300 -> 1, 769 -> 2, 1541 -> 4, 2304, 3584
# -> 8. d % 8 != 0 (300, 769, 1541) gives rows whose alignment differs from row to row.
WIDTHS = [300, 769, 1541, 2304, 3584]
N_CONCEPTS = 97


@dataclass(frozen=True)
class Case:
    hidden_dtype: torch.dtype
    dict_dtype: torch.dtype
    d: int
    mode: str = "add"
    program: str = "sequence"  # "sequence": (B, K) programs; "row": (B, S, K)
    batch: int = 3
    seq: int = 37
    slots: int = 6
    masked: bool = True
    bias: bool = False
    empty: bool = True
    hidden_offset: int = 0  # elements: views that start one element into their storage
    dict_offset: int = 0
    flat: bool = False  # hidden (T, d) instead of (B, S, d); per-row programs (T, K)

    def id(self):
        name = lambda t: str(t).removeprefix("torch.").replace("float", "f")  # noqa: E731
        parts = [f"{name(self.hidden_dtype)}-{name(self.dict_dtype)}", f"d{self.d}", self.mode, self.program,
                 f"K{self.slots}", f"{self.batch}x{self.seq}"]
        parts += [flag for flag, on in (("mask", self.masked), ("bias", self.bias), ("empty", self.empty),
                                         ("flat", self.flat)) if on]
        if self.hidden_offset or self.dict_offset:
            parts.append(f"offset{self.hidden_offset}{self.dict_offset}")
        return "-".join(parts)


def _at_offset(tensor, offset):
    """A contiguous CUDA copy of ``tensor`` that starts ``offset`` elements into its storage."""
    storage = torch.empty(tensor.numel() + offset, dtype=tensor.dtype, device="cuda")
    view = storage[offset:].view(tensor.shape)
    view.copy_(tensor)
    assert view.storage_offset() == offset and view.is_contiguous()
    return view


def _inputs(case: Case, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rows_shape = (case.batch * case.seq,) if case.flat else (case.batch, case.seq)
    hidden = _at_offset(torch.randn(*rows_shape, case.d, generator=gen).to(case.hidden_dtype), case.hidden_offset)
    dictionary = _at_offset(unit_rows(N_CONCEPTS, case.d, case.dict_dtype, "cpu", gen), case.dict_offset)
    program_shape = (case.batch, case.slots) if case.program == "sequence" else (*rows_shape, case.slots)
    ids, coeffs = make_program(program_shape, N_CONCEPTS, case.empty, "cuda", gen)
    mask = (torch.rand(rows_shape, generator=gen) < 0.6).cuda() if case.masked else None
    bias = (0.1 * torch.randn(N_CONCEPTS, generator=gen)).cuda() if case.bias else None
    return hidden, dictionary, ids, coeffs, mask, bias


def _steer(hidden, dictionary, ids, coeffs, mode, mask=None, bias=None):
    """The raw op on a poisoned allocator: acts that a kernel skips writing come out NaN."""
    poison_allocator("cuda")
    poison_allocator("cuda", 4 * ids.shape[-1] * hidden[..., 0].numel())
    return torch.ops.steerkern.steer_(hidden, dictionary, ids, coeffs, mode, mask, bias)


def _per_row(program, hidden):
    return program[:, None, :].expand(*hidden.shape[:-1], program.shape[-1]) if program.dim() < hidden.dim() else program


def _check(case: Case, seed: int = 0):
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(case, seed)
    original = hidden.clone()
    acts = _steer(hidden, dictionary, ids, coeffs, case.mode, mask, bias)
    expected_hidden, expected_acts = reference.steer(original, dictionary, ids, coeffs, mode=case.mode, mask=mask, bias=bias)

    assert acts.dtype == torch.float32 and acts.shape == (*hidden.shape[:-1], case.slots)
    assert_acts_close(acts, expected_acts, case.d)
    assert_hidden_close(hidden, expected_hidden)
    if case.empty:
        empty = _per_row(ids, hidden) < 0
        assert empty.any() and (acts[empty] == 0).all()
    if case.mode == "detect":
        assert torch.equal(hidden, original)
    if mask is not None:  # rows outside the mask are bitwise untouched
        assert (~mask).any() and torch.equal(hidden[~mask], original[~mask])
    if case.mode != "detect" and mask is not None:
        assert not torch.equal(hidden[mask], original[mask])  # and the steered ones did change


# Every instantiation, add (fused: K <= one tile) and clamp (dots, then the update pass), each
# with per-sequence programs (S > 1, masked) and per-row programs (bias, no mask).
INSTANTIATIONS = [
    Case(h, w, d, mode, program, masked=program == "sequence", bias=program == "row")
    for h, w in DTYPE_PAIRS
    for d in WIDTHS
    for mode in ("add", "clamp")
    for program in ("sequence", "row")
]

# Slot counts: one, a few, a whole tile, one past it (add leaves the fused path), many tiles,
# more slots than a block has threads.
SLOTS = [
    Case(h, w, d, mode, "row", slots=k, bias=True)
    for h, w, d in ((BF16, BF16, 2304), (FP32, FP32, 769), (FP16, FP32, 3584))
    for k in (1, 4, 8, 9, 64, 200)
    for mode in ("add", "clamp")
]

DETECT = [Case(h, w, d, "detect", program, bias=True) for h, w in DTYPE_PAIRS for d in (769, 2304)
          for program in ("sequence", "row")]

# d = 12288 (the row in 384 threads) and 16384 (in 512, the widest block), and rows of a few
# elements: all head and tail, or a body of one pack.
WIDE_AND_TINY = (
    [Case(h, w, d, mode, batch=2, seq=5, bias=True) for h, w in DTYPE_PAIRS for d in (12288, 16384)
     for mode in ("add", "clamp")]
    + [Case(h, w, d, mode, "row", batch=2, seq=9, slots=3) for h, w in ((BF16, BF16), (FP16, FP32), (FP32, FP32))
       for d in (1, 7, 8, 9, 15) for mode in ("add", "clamp")]
)

# Views one element into their storage: hidden and dictionary rows misaligned alike or differently.
MISALIGNED = [
    Case(h, w, d, mode, "row", bias=True, hidden_offset=ho, dict_offset=wo)
    for h, w in DTYPE_PAIRS
    for d, mode in ((2304, "add"), (3584, "clamp"), (769, "clamp"))
    for ho, wo in ((1, 0), (0, 1), (1, 1))
]

OTHERS = [
    Case(BF16, BF16, 2304, "clamp", "row", flat=True, bias=True),
    Case(FP32, FP32, 769, "add", "row", flat=True),
    Case(BF16, FP32, 2304, "add", "sequence", batch=1, seq=1, masked=False),  # one row
    Case(FP16, FP16, 3584, "clamp", "sequence", batch=256, seq=1, slots=4),  # a decode step
    Case(BF16, BF16, 2304, "add", "sequence", batch=2, seq=2000, masked=False),  # many rows per block
    Case(FP32, FP32, 3584, "clamp", "row", batch=2, seq=1500, bias=True),
]

CASES = INSTANTIATIONS + SLOTS + DETECT + WIDE_AND_TINY + MISALIGNED + OTHERS


@pytest.mark.parametrize("case", CASES, ids=[case.id() for case in CASES])
def test_steer_kernel_matches_reference(case):
    _check(case)


def _packs_per_thread(d, itemsize):
    """The kernel's choice (launch_shape in csrc/steer_cuda.cu): the fewest packs a thread, up to
    32 floats, that fit the row's 16-byte packs in 128 threads."""
    vec = 16 // itemsize
    packs = 1
    while packs < 32 // vec and math.ceil((d // vec) / packs) > 128:
        packs *= 2
    return packs


def test_cases_reach_every_instantiation():
    # Each (hidden, dictionary) pair meets each packs-per-thread count in add and in clamp, on
    # per-sequence and per-row programs, at a d % 8 == 0 and a d % 8 != 0.
    for h, w in DTYPE_PAIRS:
        for mode in ("add", "clamp"):
            for program in ("sequence", "row"):
                widths = {c.d for c in INSTANTIATIONS if (c.hidden_dtype, c.dict_dtype, c.mode, c.program) == (h, w, mode, program)}
                all_packs = {1, 2, 4} if h.itemsize == 2 else {1, 2, 4, 8}
                assert {_packs_per_thread(d, h.itemsize) for d in widths} == all_packs
                assert any(d % 8 for d in widths) and any(d % 8 == 0 for d in widths)
    assert {c.slots for c in SLOTS} >= {1, 4, 64, 200}
    assert {c.d for c in WIDE_AND_TINY} >= {12288}


def test_fresh_inputs_each_seed():
    # The same cases on other draws: a kernel that happens to match one input cannot pass.
    for seed in (1, 2):
        for case in (INSTANTIATIONS[0], INSTANTIATIONS[-1], SLOTS[-1], MISALIGNED[4]):
            _check(case, seed)


def test_out_of_range_ids_count_as_empty():
    case = Case(BF16, BF16, 2304, "clamp", "row", bias=True, empty=False)
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(case, 3)
    ids = ids.clone()
    ids[..., 0] = N_CONCEPTS  # one past the last row
    ids[..., 1] = 1 << 40
    ids[..., 2] = -7
    original = hidden.clone()
    acts = _steer(hidden, dictionary, ids, coeffs, "clamp", mask, bias)
    as_empty = torch.where((ids >= 0) & (ids < N_CONCEPTS), ids, torch.full_like(ids, -1))
    expected_hidden, expected_acts = reference.steer(original, dictionary, as_empty, coeffs, mode="clamp", mask=mask, bias=bias)
    assert (acts[..., :3] == 0).all()
    assert_acts_close(acts, expected_acts, case.d)
    assert_hidden_close(hidden, expected_hidden)


def test_more_than_two_to_the_31_elements():
    # Row offsets, act offsets and program indices past 2^31 elements, checked on slices.
    d, seq = 2304, 256
    batch = (1 << 31) // (seq * d) + 2
    gen = torch.Generator(device="cuda").manual_seed(4)
    hidden = torch.randn(batch, seq, d, generator=gen, device="cuda", dtype=BF16)
    assert hidden.numel() > 1 << 31
    dictionary = unit_rows(N_CONCEPTS, d, BF16, "cuda", torch.Generator().manual_seed(4))
    ids, coeffs = make_program((batch, 4), N_CONCEPTS, True, "cuda", torch.Generator().manual_seed(5))
    mask = torch.rand(batch, seq, generator=gen, device="cuda") < 0.6
    boundary = (1 << 31) // (seq * d)  # the sequence holding element 2^31
    sequences = [0, boundary, batch - 1]
    originals = {b: hidden[b : b + 1].clone() for b in sequences}
    acts = _steer(hidden, dictionary, ids, coeffs, "clamp", mask, None)
    for b in sequences:
        expected_hidden, expected_acts = reference.steer(
            originals[b], dictionary, ids[b : b + 1], coeffs[b : b + 1], mode="clamp", mask=mask[b : b + 1]
        )
        assert_acts_close(acts[b : b + 1], expected_acts, d)
        assert_hidden_close(hidden[b : b + 1], expected_hidden)
    del hidden
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", [FP32, BF16])
@pytest.mark.parametrize("d", [16, 2304])
def test_nan_propagates_like_reference(dtype, d):
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, d, generator=gen).to(dtype).cuda()
    hidden[1, 3] = float("nan")
    hidden[2, 5] = float("nan")  # in a row outside the mask: stays as it was
    dictionary = unit_rows(6, d, dtype, "cuda", gen)
    ids, coeffs = torch.tensor([[0, 1]] * 4, device="cuda"), torch.ones(4, 2, device="cuda")
    mask = torch.tensor([True, True, False, True], device="cuda")
    for mode in ("add", "clamp"):
        work = hidden.clone()
        acts = _steer(work, dictionary, ids, coeffs, mode, mask)
        expected_hidden, expected_acts = reference.steer(hidden, dictionary, ids, coeffs, mode=mode, mask=mask)
        torch.testing.assert_close(work, expected_hidden, equal_nan=True)
        torch.testing.assert_close(acts, expected_acts, equal_nan=True)
        assert acts[1].isnan().all() and acts[2].isnan().all()
        assert work[1].isnan().all() if mode == "clamp" else work[1].isnan().sum() == 1


@pytest.mark.parametrize("dtype", [FP32, BF16, FP16])
@pytest.mark.parametrize("d", [769, 2304])
def test_add_is_exact_patch_for_one_concept(dtype, d):
    # h' = round(h + α·w) in float32 with α·w rounded first, as torch computes it, bitwise.
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 4, d, generator=gen).to(dtype).cuda()
    dictionary = torch.randn(5, d, generator=gen).to(dtype).cuda()
    original = hidden.clone()
    ids, coeffs = torch.tensor([[2], [4]], device="cuda"), torch.tensor([[1.5], [-0.37]], device="cuda")
    _steer(hidden, dictionary, ids, coeffs, "add")
    for b, (c, alpha) in enumerate(((2, 1.5), (4, -0.37))):
        alpha = torch.tensor(alpha, dtype=torch.float32)
        assert torch.equal(hidden[b], (original[b].float() + alpha.cuda() * dictionary[c].float()).to(dtype))


def test_non_contiguous_arguments():
    # hidden through the public op (a contiguous copy, written back); the raw op makes the
    # dictionary, ids and coeffs contiguous itself.
    assert steerkern.build_info()["compiled_with_cuda"], "the CUDA kernels are not built"
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(6, 2 * 2304, generator=gen).cuda()
    hidden = base[:, ::2]
    original = hidden.clone()
    dictionary = unit_rows(8, 2 * 2304, FP32, "cuda", gen)[:, :2304]
    assert not hidden.is_contiguous() and not dictionary.is_contiguous()
    ids, coeffs = make_program((2, 6), 8, True, "cuda", gen)
    ids, coeffs = ids.T, coeffs.T  # (6, 2), not contiguous
    untouched = base[:, 1::2].clone()
    poison_allocator("cuda")
    acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mode="clamp")
    expected, expected_acts = reference.steer(original, dictionary, ids, coeffs, mode="clamp")
    assert_hidden_close(hidden, expected)
    assert_acts_close(acts, expected_acts, 2304)
    assert torch.equal(base[:, 1::2], untouched)

    work = original.clone()
    acts = _steer(work, dictionary, ids, coeffs, "clamp")
    assert_hidden_close(work, expected)
    assert_acts_close(acts, expected_acts, 2304)


def _without_launch_blocking(name, *args):
    """Runs ``name(*args)`` of this module here, or, under CUDA_LAUNCH_BLOCKING=1 (gpu_check's test
    step: it makes every launch wait for its kernel, so no stream is ever still busy, and it may
    not mix with graph capture), in a fresh Python without it."""
    if os.environ.get("CUDA_LAUNCH_BLOCKING", "0") != "1":
        return globals()[name](*args)
    env = {key: value for key, value in os.environ.items() if key != "CUDA_LAUNCH_BLOCKING"}
    code = f"import tests.test_cuda_kernels as module; module.{name}(*{args!r})"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def check_current_stream():
    # The side stream is busy for a while before the op: had the op run on another stream, hidden
    # would be steered before the side stream is done, and the check made meanwhile would see it.
    case = Case(BF16, BF16, 2304, "clamp", "row", bias=True)
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(case, 6)
    original = hidden.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s
        acts = torch.ops.steerkern.steer_(hidden, dictionary, ids, coeffs, "clamp", mask, bias)
    unchanged = torch.equal(hidden, original)  # on the default stream, while the side one sleeps
    side.synchronize()
    assert unchanged, "the op did not wait for the stream it was called on"
    expected_hidden, expected_acts = reference.steer(original, dictionary, ids, coeffs, mode="clamp", mask=mask, bias=bias)
    assert_hidden_close(hidden, expected_hidden)
    assert_acts_close(acts, expected_acts, case.d)


def test_runs_on_the_current_stream():
    _without_launch_blocking("check_current_stream")


def check_graph_replay(mode, slots):
    # Captured once; each replay steers new values of the same tensors (hidden, ids, coeffs,
    # mask), as a decode loop's graph does.
    case = Case(BF16, BF16, 3584, mode, "sequence", batch=8, seq=1, slots=slots, bias=True)
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(case, 7)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        torch.ops.steerkern.steer_(hidden.clone(), dictionary, ids, coeffs, mode, mask, bias)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        acts = torch.ops.steerkern.steer_(hidden, dictionary, ids, coeffs, mode, mask, bias)
    for seed in (8, 9, 10):
        fresh = _inputs(case, seed)
        for static, new in zip((hidden, ids, coeffs, mask), fresh[:1] + fresh[2:5]):
            static.copy_(new)
        original = hidden.clone()
        acts.fill_(float("nan"))
        graph.replay()
        expected_hidden, expected_acts = reference.steer(original, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias)
        assert_hidden_close(hidden, expected_hidden)
        assert_acts_close(acts, expected_acts, case.d)


def check_graph_replays():
    for mode, slots in (("add", 4), ("clamp", 4), ("add", 20)):  # fused add, clamp, add in two passes
        check_graph_replay(mode, slots)


def test_captured_in_a_cuda_graph_and_replayed():
    _without_launch_blocking("check_graph_replays")


def test_compile_fullgraph_matches_eager():
    assert steerkern.build_info()["compiled_with_cuda"], "the CUDA kernels are not built"

    def steer_and_read(hidden, dictionary, ids, coeffs, mask):
        hidden = hidden * 1.0  # a fresh buffer: the op mutates it inside the graph
        acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mode="clamp", mask=mask)
        top = steerkern.detect(hidden, dictionary, reduce="max")
        return hidden, acts, top

    case = Case(BF16, BF16, 2304, "clamp", "row")
    hidden, dictionary, ids, coeffs, mask, _ = _inputs(case, 11)
    eager = steer_and_read(hidden, dictionary, ids, coeffs, mask)
    compiled_fn = torch.compile(steer_and_read, fullgraph=True)
    for got, want in zip(compiled_fn(hidden, dictionary, ids, coeffs, mask), eager):
        torch.testing.assert_close(got, want)


def test_device_mismatch_is_named_before_the_device_guard():
    # A CPU hidden with CUDA arguments reaches the CUDA kernels (the dispatcher picks CUDA): the
    # error names the mismatch, and nothing is written.
    hidden = torch.randn(2, 3, 16)
    original = hidden.clone()
    dictionary = torch.randn(10, 16, device="cuda")
    ids, coeffs = torch.tensor([[1, 2], [3, -1]]), torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"dictionary is on cuda:0 but hidden is on cpu"):
        torch.ops.steerkern.steer_(hidden, dictionary, ids, coeffs, "add", None, None)
    with pytest.raises(ValueError, match=r"concept_ids is on cuda:0 but hidden is on cpu"):
        torch.ops.steerkern.steer_(hidden, dictionary.cpu(), ids.cuda(), coeffs, "add", None, None)
    with pytest.raises(ValueError, match=r"dictionary is on cpu but hidden is on cuda:0"):
        torch.ops.steerkern.steer_(hidden.cuda(), dictionary.cpu(), ids.cuda(), coeffs.cuda(), "add", None, None)
    assert torch.equal(hidden, original)
    with pytest.raises(ValueError, match=r"the detection weight is on cuda:0 but hidden is on cpu"):
        torch.ops.steerkern.detect(hidden, dictionary, False, None, None, None, False)
    with pytest.raises(ValueError, match=r"mask is on cuda:0 but hidden is on cpu"):
        torch.ops.steerkern.detect(hidden, dictionary.cpu(), False, None, None, torch.ones(2, 3, dtype=torch.bool, device="cuda"), True)


def _shared_memory_optin():
    props = torch.cuda.get_device_properties(0)
    return getattr(props, "shared_memory_per_block_optin", 227 * 1024)


def test_slots_past_48_kb_of_shared_memory_run():
    # 5000 slots take 60 KB of shared memory: the launch needs the opt-in limit.
    slots, d = 5000, 2304
    assert slots * 12 > 48 * 1024 and slots * 12 + 1024 < _shared_memory_optin()
    case = Case(FP32, FP32, d, "clamp", "row", batch=1, seq=2, slots=slots, bias=True)
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(case, 12)
    coeffs = coeffs * 0.05  # keeps the sum of 5000 terms within float32's tolerance
    original = hidden.clone()
    acts = _steer(hidden, dictionary, ids, coeffs, "clamp", mask, bias)
    expected_hidden, expected_acts = reference.steer(original, dictionary, ids, coeffs, mode="clamp", mask=mask, bias=bias)
    assert_acts_close(acts, expected_acts, d)
    assert_hidden_close(hidden, expected_hidden)
    assert not torch.equal(hidden, original)


def test_shared_memory_beyond_the_device_is_refused_naming_d_and_k():
    slots = _shared_memory_optin() // 12 + 64
    hidden = torch.randn(1, 64, device="cuda")
    original = hidden.clone()
    dictionary = torch.randn(4, 64, device="cuda")
    ids, coeffs = torch.zeros(1, slots, dtype=torch.long, device="cuda"), torch.ones(1, slots, device="cuda")
    with pytest.raises(RuntimeError, match=rf"K = {slots} slots at d = 64 need \d+ bytes of shared memory"):
        torch.ops.steerkern.steer_(hidden, dictionary, ids, coeffs, "add", None, None)
    assert torch.equal(hidden, original)


def test_rows_too_wide_for_the_kernel_are_refused_naming_d():
    hidden = torch.randn(1, 20000, device="cuda")
    dictionary = torch.randn(2, 20000, device="cuda")
    ids, coeffs = torch.zeros(1, 1, dtype=torch.long, device="cuda"), torch.ones(1, 1, device="cuda")
    with pytest.raises(RuntimeError, match=r"got d = 20000"):
        torch.ops.steerkern.steer_(hidden, dictionary, ids, coeffs, "add", None, None)


def test_every_case_id_is_unique():
    ids = [case.id() for case in CASES]
    assert len(ids) == len(set(ids))
