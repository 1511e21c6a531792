"""steer_ with gate slots: a row is written only where its gate passes, in the same pass that
reads it, against the reference and against detect-then-steer with the gate as the row mask."""

from __future__ import annotations

import math

import pytest
import torch

import steerkern
from steerkern import reference
from tests.op_cases import assert_acts_close, assert_hidden_close, make_program, poison_allocator, unit_rows

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
CONCEPTS = 53

# (dtype, dictionary float32, d, steering slots, gate slots, per-row programs, mode, all-of)
CASES = [
    (torch.float32, False, 769, 3, 1, False, "add", False),
    (torch.float32, False, 7, 1, 2, True, "clamp", True),
    (torch.bfloat16, False, 2304, 4, 2, False, "add", True),
    (torch.bfloat16, True, 2053, 6, 3, True, "clamp", False),
    (torch.bfloat16, False, 2304, 5, 2, True, "add", False),
    (torch.float16, False, 3584, 2, 1, True, "add", False),
    (torch.float16, True, 769, 60, 4, False, "add", False),
    (torch.float32, True, 2304, 8, 56, True, "add", False),
]


def gated_inputs(dtype, dictionary_fp32, d, slots, gates, per_row, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch, seq = 3, 11
    hidden = torch.randn(batch, seq, d, generator=gen).to(dtype=dtype, device=device)
    dictionary = unit_rows(CONCEPTS, d, torch.float32 if dictionary_fp32 else dtype, device, gen)
    shape = (batch, seq) if per_row else (batch,)
    ids, coeffs = make_program(shape + (slots + gates,), CONCEPTS, True, device, gen)
    # Gate thresholds that some rows pass and some do not: about the median activation for a few
    # gates, in the far tail of N(0, 1) when many gates give a row many chances.
    above = torch.full(shape + (slots + gates,), math.nan)
    below = torch.full(shape + (slots + gates,), math.nan)
    above[..., slots:] = torch.rand(shape + (gates,), generator=gen) * 0.05 + (2.4 if gates > 8 else 0.0)
    below[..., slots:] = torch.where(torch.rand(shape + (gates,), generator=gen) < 0.3, 0.5, math.inf)
    bounds = torch.stack([above, below], dim=-1).to(device)
    mask = (torch.rand(batch, seq, generator=gen) < 0.8).to(device)
    bias = (0.05 * torch.randn(CONCEPTS, generator=gen)).to(device)
    return hidden, dictionary, ids, coeffs, bounds, mask, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(str(v).replace("torch.", "") for v in case))
def test_gated_steer_matches_reference(case, device):
    dtype, dictionary_fp32, d, slots, gates, per_row, mode, every = case
    hidden, dictionary, ids, coeffs, bounds, mask, bias = gated_inputs(dtype, dictionary_fp32, d, slots, gates,
                                                                       per_row, device)
    gate_all = torch.full(ids.shape[:-1], every, device=device)
    original = hidden.clone()
    poison_allocator(device, 4 * ids.shape[-1] * original[..., 0].numel())
    acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias, gate_bounds=bounds,
                            gate_all=gate_all)
    expected, expected_acts = reference.steer(original, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias,
                                              gate_bounds=bounds, gate_all=gate_all)
    assert_acts_close(acts, expected_acts, d)
    assert_hidden_close(hidden, expected)

    # The same as reading the gates, thresholding them by hand and steering with that row mask.
    gate_acts = expected_acts[..., slots:]
    per_row_bounds = bounds if per_row else bounds[:, None].expand(*acts.shape, 2)
    passes = (gate_acts > per_row_bounds[..., slots:, 0]) & (gate_acts < per_row_bounds[..., slots:, 1])
    filled = (ids[..., slots:] >= 0) if per_row else (ids[:, None, slots:] >= 0).expand_as(passes)
    opened = (passes | ~filled).all(-1) if every else (passes & filled).any(-1)
    opened |= ~filled.any(-1)
    rows = mask & opened
    assert 0 < rows.sum() < mask.sum()
    by_hand = original.clone()
    steer_ids = ids[..., :slots].contiguous()
    steerkern.steer_(by_hand, dictionary, steer_ids, coeffs[..., :slots].contiguous(), mode=mode, mask=rows,
                     bias=bias)
    assert_hidden_close(hidden, by_hand)
    assert torch.equal(hidden[~rows], original[~rows])  # rows the gate stops are bitwise untouched


@pytest.mark.parametrize("device", DEVICES)
def test_a_program_without_gate_slots_is_steered_as_usual(device):
    hidden, dictionary, ids, coeffs, bounds, mask, bias = gated_inputs(torch.float32, False, 64, 2, 1, False, device)
    bounds[1] = math.nan  # sequence 1 has no gate (all its slots steer): steered wherever the mask says
    work = hidden.clone()
    steerkern.steer_(work, dictionary, ids, coeffs, mask=mask, bias=bias, gate_bounds=bounds)
    plain = hidden[1:2].clone()
    steerkern.steer_(plain, dictionary, ids[1:2], coeffs[1:2], bias=bias, mask=mask[1:2])
    assert_hidden_close(work[1:2], plain[:1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["add", "clamp", "detect"])
def test_opcheck_gated_steer(device, mode):
    if steerkern.build_info()["backend"] != "compiled":
        pytest.skip("steerkern._C is not built")
    hidden, dictionary, ids, coeffs, bounds, mask, bias = gated_inputs(torch.float32, False, 24, 2, 2, True, device)
    gate_all = torch.rand(ids.shape[:-1], generator=torch.Generator().manual_seed(1)).lt(0.5).to(device)
    torch.library.opcheck(torch.ops.steerkern.steer_.default,
                          (hidden, dictionary, ids, coeffs, mode, mask, bias, bounds, gate_all))


def test_gated_steer_compiles_fullgraph():
    def gated(hidden, dictionary, ids, coeffs, bounds):
        hidden = hidden * 1.0
        acts = steerkern.steer_(hidden, dictionary, ids, coeffs, gate_bounds=bounds)
        return hidden, acts

    hidden, dictionary, ids, coeffs, bounds, _, _ = gated_inputs(torch.float32, False, 32, 2, 1, True, "cpu")
    eager = gated(hidden, dictionary, ids, coeffs, bounds)
    for got, want in zip(torch.compile(gated, fullgraph=True)(hidden, dictionary, ids, coeffs, bounds), eager):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "bounds, gate_all, message",
    [
        (torch.zeros(2, 2), None, r"gate_bounds must be floating point with shape \(2, 2, 2\)"),
        (torch.zeros(2, 2, 2, dtype=torch.int64), None, "gate_bounds must be floating point"),
        (None, torch.ones(2, dtype=torch.bool), "gate_all needs gate_bounds"),
        (torch.zeros(2, 2, 2), torch.ones(3, dtype=torch.bool), r"gate_all must be a bool tensor of shape \(2,\)"),
    ],
)
def test_bad_gate_arguments(bounds, gate_all, message):
    hidden = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match=message):
        steerkern.steer_(hidden, torch.randn(5, 16), torch.tensor([[1, 2], [3, 4]]), torch.ones(2, 2),
                         gate_bounds=bounds, gate_all=gate_all)
