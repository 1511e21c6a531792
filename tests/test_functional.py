"""``steerkern.steer``, the differentiable functional op: gradcheck in float64 against its own
backward, the kernel path's gradients against the reference's in float32, masks, empty slots,
both program kinds, and torch.compile."""

from __future__ import annotations

import itertools

import pytest
import torch

import steerkern
from steerkern import reference
from tests.op_cases import make_program, unit_rows

MODES = ["add", "clamp", "detect"]
PROGRAMS = ["per_sequence", "per_row"]


def _inputs(mode, program, masked, dtype=torch.float64, seed=0, device="cpu", batch=2, seq=3, d=5, slots=3):
    gen = torch.Generator().manual_seed(seed)
    n_concepts = 4
    hidden = torch.randn(batch, seq, d, generator=gen, dtype=torch.float64)
    dictionary = unit_rows(n_concepts, d, torch.float64, "cpu", gen) * 2
    shape = (batch, slots) if program == "per_sequence" else (batch, seq, slots)
    ids, coeffs = make_program(shape, n_concepts, True, "cpu", gen)
    ids.view(-1)[0] = -1  # at least one empty slot
    bias = torch.randn(n_concepts, generator=gen, dtype=torch.float64) * 0.5
    mask = torch.rand(batch, seq, generator=gen) < 0.6 if masked else None
    tensors = [hidden, dictionary, coeffs.double(), bias]
    hidden, dictionary, coeffs, bias = (t.to(device=device, dtype=dtype).requires_grad_() for t in tensors)
    return hidden, dictionary, ids.to(device), coeffs, mask if mask is None else mask.to(device), bias


CASES = list(itertools.product(MODES, PROGRAMS, [False, True]))


@pytest.mark.parametrize("mode,program,masked", CASES)
def test_gradcheck_float64(mode, program, masked):
    hidden, dictionary, ids, coeffs, mask, bias = _inputs(mode, program, masked)

    def fn(hidden, dictionary, coeffs, bias):
        return steerkern.steer(hidden, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias)

    assert torch.autograd.gradcheck(fn, (hidden, dictionary, coeffs, bias))


@pytest.mark.parametrize("mode,program,masked", CASES)
def test_gradients_match_autograd_through_the_reference(mode, program, masked):
    """The hand-written backward against autograd differentiating the reference math itself."""
    inputs = _inputs(mode, program, masked, dtype=torch.float32, seed=1, batch=3, seq=5, d=33, slots=2)
    hidden, dictionary, ids, coeffs, mask, bias = inputs
    gen = torch.Generator().manual_seed(2)
    weights = (torch.randn(hidden.shape, generator=gen), torch.randn((*hidden.shape[:-1], ids.shape[-1]), generator=gen))

    def grads(fn):
        steered, acts = fn(hidden, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias)
        loss = (steered * weights[0]).sum() + (acts * weights[1]).sum()
        return torch.autograd.grad(loss, (hidden, dictionary, coeffs, bias), allow_unused=True)

    expected = [torch.zeros_like(t) if g is None else g for g, t in zip(grads(reference.steer), (hidden, dictionary, coeffs, bias))]
    for actual, wanted in zip(grads(steerkern.steer), expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-5)


def test_masked_rows_get_no_steering_gradient_and_keep_their_acts():
    hidden, dictionary, ids, coeffs, _, bias = _inputs("add", "per_row", False, batch=1, seq=4)
    mask = torch.tensor([[True, False, True, False]])
    steered, acts = steerkern.steer(hidden, dictionary, ids, coeffs, mask=mask, bias=bias)
    _, unmasked_acts = steerkern.steer(hidden, dictionary, ids, coeffs, bias=bias)
    torch.testing.assert_close(acts, unmasked_acts)
    (grad_coeffs,) = torch.autograd.grad(steered.sum(), coeffs)
    assert (grad_coeffs[0, ~mask[0]] == 0).all()
    assert (grad_coeffs[0, mask[0]][ids[0, mask[0]] >= 0] != 0).all()
    torch.testing.assert_close(steered[0, ~mask[0]], hidden[0, ~mask[0]])


def test_empty_slots_get_no_gradient():
    hidden, dictionary, ids, coeffs, _, bias = _inputs("clamp", "per_row", False)
    steered, acts = steerkern.steer(hidden, dictionary, ids, coeffs, mode="clamp", bias=bias)
    (grad_coeffs,) = torch.autograd.grad(steered.sum() + acts.sum(), coeffs)
    assert (grad_coeffs[ids < 0] == 0).all()
    assert (acts[ids < 0] == 0).all()


def test_steer_leaves_its_inputs_untouched():
    hidden, dictionary, ids, coeffs, mask, bias = (t.detach() if t is not None else t for t in _inputs("clamp", "per_row", True, dtype=torch.float32))
    before = hidden.clone()
    steered, _ = steerkern.steer(hidden, dictionary, ids, coeffs, mode="clamp", mask=mask, bias=bias)
    assert torch.equal(hidden, before)
    assert not torch.equal(steered, hidden)


def test_steer_rejects_bad_input_clearly():
    hidden, dictionary, ids, coeffs, _, _ = _inputs("add", "per_row", False)
    with pytest.raises(ValueError, match="outside"):
        steerkern.steer(hidden, dictionary, ids + 10, coeffs)
    with pytest.raises(ValueError, match="mode"):
        steerkern.steer(hidden, dictionary, ids, coeffs, mode="scale")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,program,masked", CASES)
def test_kernel_path_gradients_equal_reference_path_gradients(mode, program, masked, device, monkeypatch):
    """float32 runs the compiled kernels forward and backward; STEERKERN_BACKEND=reference the math."""
    if not steerkern.build_info()["backend"] == "compiled":
        pytest.skip("steerkern._C is not built")
    inputs = _inputs(mode, program, masked, dtype=torch.float32, seed=3, device=device, batch=3, seq=7, d=769, slots=3)
    hidden, dictionary, ids, coeffs, mask, bias = inputs

    def grads():
        steered, acts = steerkern.steer(hidden, dictionary, ids, coeffs, mode=mode, mask=mask, bias=bias)
        loss = (steered * steered.detach()).sum() + (acts * acts.detach()).sum()
        return [steered, acts, *torch.autograd.grad(loss, (hidden, dictionary, coeffs, bias))]

    kernel = grads()
    monkeypatch.setenv("STEERKERN_BACKEND", "reference")
    for actual, wanted in zip(kernel, grads()):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-4)


def test_steer_compiles_and_trains_like_eager():
    hidden, dictionary, ids, coeffs, mask, bias = _inputs("clamp", "per_row", True, dtype=torch.float32, seed=4, d=16)

    def loss(hidden, dictionary, coeffs, bias):
        steered, acts = steerkern.steer(hidden, dictionary, ids, coeffs, mode="clamp", mask=mask, bias=bias)
        return (steered.square().sum() + acts.sum()).reshape(())

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    args = (hidden, dictionary, coeffs, bias)
    eager_grads = torch.autograd.grad(loss(*args), args)
    compiled_grads = torch.autograd.grad(compiled(*args), args)
    for actual, wanted in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(actual, wanted)


def test_opcheck_passes():
    hidden, dictionary, ids, coeffs, mask, bias = (t.detach() if t is not None else t for t in _inputs("clamp", "per_row", True, dtype=torch.float32))
    torch.library.opcheck(torch.ops.steerkern.steer.default, (hidden, dictionary, ids, coeffs, "clamp", mask, bias))
