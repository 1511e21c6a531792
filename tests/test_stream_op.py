"""steer_ on a layer output held apart from its residual (``residual=``), and clamp calls where
only some programs clamp (``clamped=``): the one call a vLLM layer makes. Against the reference
on fresh inputs, the reference against the two-call form it replaces, opcheck, and bad input."""

from __future__ import annotations

import pytest
import torch

import steerkern
from steerkern import reference
from tests.op_cases import assert_acts_close, assert_hidden_close, make_program, unit_rows
from tests.pairwise import all_pairs, uncovered_pairs

AXES = {
    "mode": ["add", "clamp", "detect"],
    "dtype": [torch.float32, torch.bfloat16, torch.float16],
    "program": ["per_sequence", "per_row"],
    "masked": [False, True],
    "d": [1, 7, 769, 2304],
    "slots": [1, 3, 6, 64],
    "dictionary_fp32": [False, True],
    "residual": [False, True, "misaligned"],  # misaligned: one element off hidden's 16-byte alignment
    "clamped": [False, True],
    "gated": [False, True],
}


def _allowed(case):
    return case["mode"] == "clamp" or not case["clamped"]


GRID = all_pairs(AXES, _allowed)


def test_grid_covers_every_pair():
    assert uncovered_pairs(GRID, AXES, _allowed) == []

compiled = pytest.mark.skipif(steerkern.build_info()["backend"] != "compiled", reason="steerkern._C is not built")


def _inputs(case, device, seed):
    gen = torch.Generator().manual_seed(seed)
    d, dtype = case["d"], case["dtype"]
    batch, seq, n_concepts = 3, 11, 41
    hidden = torch.randn(batch, seq, d, generator=gen).to(dtype=dtype, device=device)
    residual = None
    if case["residual"]:
        offset = 1 if case["residual"] == "misaligned" else 0
        storage = torch.randn(batch * seq * d + offset, generator=gen).to(dtype=dtype, device=device)
        residual = storage[offset:].view(batch, seq, d)
    dictionary = unit_rows(n_concepts, d, torch.float32 if case["dictionary_fp32"] else dtype, device, gen)
    program_shape = (batch, case["slots"]) if case["program"] == "per_sequence" else (batch, seq, case["slots"])
    ids, coeffs = make_program(program_shape, n_concepts, True, device, gen)
    mask = (torch.rand(batch, seq, generator=gen) < 0.6).to(device) if case["masked"] else None
    clamped = (torch.rand(program_shape[:-1], generator=gen) < 0.5).to(device) if case["clamped"] else None
    gate_bounds = None
    if case.get("gated"):  # the first slot gates the rest: about half the rows pass
        gate_bounds = torch.full((*program_shape, 2), float("nan"))
        gate_bounds[..., 0, 0], gate_bounds[..., 0, 1] = 0.0, float("inf")
        gate_bounds = gate_bounds.to(device)
    return dict(hidden=hidden, dictionary=dictionary, concept_ids=ids, coeffs=coeffs, mode=case["mode"], mask=mask,
                bias=(0.1 * torch.randn(n_concepts, generator=gen)).to(device), residual=residual, clamped=clamped,
                gate_bounds=gate_bounds)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("case", GRID, ids=lambda case: "-".join(f"{k}={str(v).replace('torch.', '')}" for k, v in case.items()))
def test_steer_with_residual_and_clamped_matches_reference(case, device):
    for seed in (0, 1):
        args = _inputs(case, device, seed)
        hidden = args.pop("hidden")
        original = hidden.clone()
        residual_before = None if args["residual"] is None else args["residual"].clone()
        acts = steerkern.steer_(hidden, **args)
        expected_hidden, expected_acts = reference.steer(original, **args)
        assert_acts_close(acts, expected_acts, case["d"])
        assert_hidden_close(hidden, expected_hidden)
        if residual_before is not None:  # read, never written
            assert torch.equal(args["residual"], residual_before)
        if args["mask"] is not None:
            assert torch.equal(hidden[~args["mask"]], original[~args["mask"]])


def test_reference_reads_the_stream_and_adds_to_hidden_alone():
    # The one call equals forming the stream, steering it and taking the residual back off.
    gen = torch.Generator().manual_seed(3)
    hidden, residual = torch.randn(2, 9, 64, generator=gen, dtype=torch.float64).unbind(0)
    dictionary = unit_rows(13, 64, torch.float64, "cpu", gen)
    ids, coeffs = make_program((9, 4), 13, True, "cpu", gen)
    for mode in ("add", "clamp"):
        steered, acts = reference.steer(hidden, dictionary, ids, coeffs, mode=mode, residual=residual)
        steered_stream, stream_acts = reference.steer(hidden + residual, dictionary, ids, coeffs, mode=mode)
        torch.testing.assert_close(acts, stream_acts)
        torch.testing.assert_close(steered + residual, steered_stream)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clamped_flags_equal_an_add_call_and_a_clamp_call(device, dtype):
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(37, 515, generator=gen).to(dtype=dtype, device=device)
    dictionary = unit_rows(29, 515, dtype, device, gen)
    ids, coeffs = make_program((37, 5), 29, True, device, gen)
    clamped = (torch.rand(37, generator=gen) < 0.5).to(device)
    one_call = hidden.clone()
    acts = steerkern.steer_(one_call, dictionary, ids, coeffs, mode="clamp", clamped=clamped)
    two_calls = hidden.clone()
    clamp_acts = steerkern.steer_(two_calls, dictionary, ids.masked_fill(~clamped[:, None], -1), coeffs, mode="clamp")
    add_acts = steerkern.steer_(two_calls, dictionary, ids.masked_fill(clamped[:, None], -1), coeffs, mode="add")
    assert_hidden_close(one_call, two_calls)
    assert_acts_close(acts, torch.where(clamped[:, None], clamp_acts, add_acts), 515)


@compiled
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_opcheck_steer_with_residual(device, mode):
    case = dict(mode=mode, dtype=torch.float32, program="per_row", masked=True, d=24, slots=3, dictionary_fp32=False,
                residual=True, clamped=mode == "clamp")
    a = _inputs(case, device, 2)
    torch.library.opcheck(torch.ops.steerkern.steer_.default,
                          (a["hidden"], a["dictionary"], a["concept_ids"], a["coeffs"], mode, a["mask"], a["bias"], None,
                           None, a["residual"], a["clamped"]))


BAD = [
    ("residual of another dtype", dict(residual=lambda a: a["hidden"].double()), "residual must have hidden's dtype"),
    ("residual of another shape", dict(residual=lambda a: a["hidden"][:, :-1]), "residual must have hidden's dtype"),
    ("residual is hidden", dict(residual=lambda a: a["hidden"]), "residual shares memory with hidden"),
    ("clamped in mode add", dict(mode=lambda a: "add"), "clamped picks the clamping programs"),
    ("clamped per row of a per-sequence program", dict(clamped=lambda a: torch.ones(3, 11, dtype=torch.bool)),
     "clamped must be a bool tensor of shape"),
    ("clamped not bool", dict(clamped=lambda a: a["clamped"].float()), "clamped must be a bool tensor"),
]


@pytest.mark.parametrize("name,override,message", BAD, ids=[entry[0] for entry in BAD])
def test_bad_residual_or_clamped_is_refused_before_anything_is_written(name, override, message):
    case = dict(mode="clamp", dtype=torch.float32, program="per_sequence", masked=False, d=16, slots=2,
                dictionary_fp32=False, residual=True, clamped=True)
    args = _inputs(case, "cpu", 0)
    args.update({key: make(args) for key, make in override.items()})
    hidden = args.pop("hidden")
    original = hidden.clone()
    with pytest.raises(ValueError, match=message):
        steerkern.steer_(hidden, **args)
    assert torch.equal(hidden, original)


def test_a_residual_overlapping_hidden_is_refused_by_the_wrapper_and_the_raw_op():
    case = dict(mode="clamp", dtype=torch.float32, program="per_row", masked=False, d=16, slots=2,
                dictionary_fp32=False, residual=True, clamped=True)
    a = _inputs(case, "cpu", 0)
    hidden = a.pop("hidden")
    d = hidden.shape[-1]
    buffer = torch.cat([hidden.reshape(-1), torch.randn(d)])
    hidden = buffer[:hidden.numel()].view(hidden.shape)
    a["residual"] = buffer[d:].view(hidden.shape)  # starts one row into hidden
    original = buffer.clone()
    with pytest.raises(ValueError, match="residual shares memory with hidden"):
        steerkern.steer_(hidden, **a)
    if steerkern.build_info()["backend"] == "compiled":
        with pytest.raises(ValueError, match="residual shares memory with hidden"):
            torch.ops.steerkern.steer_(hidden, a["dictionary"], a["concept_ids"], a["coeffs"], "clamp", None, None,
                                       None, None, a["residual"], a["clamped"])
    assert torch.equal(buffer, original)


@compiled
def test_raw_op_checks_residual_and_clamped():
    case = dict(mode="clamp", dtype=torch.float32, program="per_row", masked=False, d=16, slots=2,
                dictionary_fp32=False, residual=True, clamped=True)
    a = _inputs(case, "cpu", 0)
    call = torch.ops.steerkern.steer_
    head = (a["hidden"], a["dictionary"], a["concept_ids"], a["coeffs"])
    with pytest.raises(ValueError, match="residual must have hidden's dtype and shape"):
        call(*head, "clamp", None, None, None, None, a["residual"][:, 1:].contiguous(), None)
    with pytest.raises(ValueError, match="residual shares memory with hidden"):
        call(*head, "clamp", None, None, None, None, a["hidden"], None)
    with pytest.raises(ValueError, match="clamped picks the clamping programs of mode clamp"):
        call(*head, "add", None, None, None, None, None, a["clamped"])
    with pytest.raises(ValueError, match="clamped must be bool with one flag per program"):
        call(*head, "clamp", None, None, None, None, None, a["clamped"][:1])
