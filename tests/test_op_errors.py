"""Bad input gets a ValueError naming the argument, and nothing the caller passed is modified."""

from __future__ import annotations

import pytest
import torch

import steerkern


def _good():
    gen = torch.Generator().manual_seed(0)
    return dict(
        hidden=torch.randn(2, 3, 16, generator=gen),
        dictionary=torch.randn(10, 16, generator=gen),
        concept_ids=torch.tensor([[1, 2], [3, -1]]),
        coeffs=torch.tensor([[1.0, 2.0], [0.5, 0.0]]),
    )


def _call(args, **kwargs):
    return steerkern.steer_(args.pop("hidden"), args.pop("dictionary"), args.pop("concept_ids"), args.pop("coeffs"), **kwargs)


STEER_ERRORS = [
    ("hidden int", dict(hidden=torch.ones(2, 3, 16, dtype=torch.int32)), {}, "hidden must be a float32"),
    ("hidden float64", dict(hidden=torch.ones(2, 3, 16, dtype=torch.float64)), {}, "hidden must be a float32"),
    ("hidden rank 1", dict(hidden=torch.ones(16)), {}, r"hidden must be \(B, S, d\)"),
    ("d mismatch", dict(dictionary=torch.randn(10, 15)), {}, "differs from the dictionary's d"),
    ("d zero", dict(hidden=torch.ones(2, 3, 0), dictionary=torch.ones(10, 0)), {}, "hidden has d = 0"),
    ("dictionary dtype", dict(dictionary=torch.randn(10, 16, dtype=torch.float16)), {}, "dictionary must have hidden's dtype"),
    ("dictionary rank", dict(dictionary=torch.randn(10, 16, 1)), {}, "dictionary must be 2-D"),
    ("id too large", dict(concept_ids=torch.tensor([[1, 10], [3, -1]])), {}, "concept_ids holds 10"),
    ("id below -1", dict(concept_ids=torch.tensor([[1, -2], [3, -1]])), {}, "concept_ids holds -2"),
    ("float ids", dict(concept_ids=torch.tensor([[1.0, 2.0], [3.0, 1.0]])), {}, "concept_ids must be an integer"),
    ("coeffs shape", dict(coeffs=torch.ones(2, 3)), {}, "coeffs shape"),
    ("coeffs int", dict(coeffs=torch.ones(2, 2, dtype=torch.int64)), {}, "coeffs must be floating"),
    ("program shape", dict(concept_ids=torch.zeros(3, 2, dtype=torch.long), coeffs=torch.ones(3, 2)), {}, "concept_ids must be"),
    ("no slots", dict(concept_ids=torch.zeros(2, 0, dtype=torch.long), coeffs=torch.ones(2, 0)), {}, "at least one slot"),
    ("mode", {}, dict(mode="scale"), "mode must be one of"),
    ("mask dtype", {}, dict(mask=torch.ones(2, 3)), "mask must be a bool"),
    ("mask shape", {}, dict(mask=torch.ones(3, 2, dtype=torch.bool)), r"mask must have shape \(2, 3\)"),
    ("bias shape", {}, dict(bias=torch.ones(9)), r"bias must have shape \(10,\)"),
    ("dictionary device", dict(dictionary=torch.randn(10, 16, device="meta")), {}, "dictionary is on meta"),
]


@pytest.mark.parametrize("name,override,kwargs,message", STEER_ERRORS, ids=[e[0] for e in STEER_ERRORS])
def test_steer_rejects_bad_input_without_writing(name, override, kwargs, message):
    args = {**_good(), **override}
    before = {k: v.clone() for k, v in args.items() if v.device.type != "meta"}
    inputs = dict(args)
    with pytest.raises(ValueError, match=message):
        _call(inputs, **kwargs)
    for key, value in before.items():
        assert torch.equal(args[key], value), f"{key} was modified"


DETECT_ERRORS = [
    ("d mismatch", dict(dictionary=torch.randn(10, 15)), "differs from the dictionary's d"),
    ("encoder d", dict(encoder=torch.randn(15, 10)), "differs from the encoder's d"),
    ("d zero", dict(hidden=torch.ones(2, 3, 0), dictionary=torch.ones(10, 0)), "hidden has d = 0"),
    ("threshold shape", dict(threshold=torch.ones(4)), r"threshold must have shape \(10,\)"),
    ("reduce", dict(reduce="mean"), "reduce must be one of"),
    ("mask", dict(mask=torch.ones(2, 3)), "mask must be a bool"),
]


@pytest.mark.parametrize("name,kwargs,message", DETECT_ERRORS, ids=[e[0] for e in DETECT_ERRORS])
def test_detect_rejects_bad_input(name, kwargs, message):
    args = _good()
    hidden, dictionary = kwargs.pop("hidden", args["hidden"]), kwargs.pop("dictionary", args["dictionary"])
    with pytest.raises(ValueError, match=message):
        steerkern.detect(hidden, dictionary, **kwargs)


def test_raw_op_checks_its_arguments():
    # Callers of torch.ops.steerkern.* directly get a clear error rather than a crash.
    if steerkern.build_info()["backend"] != "compiled":
        pytest.skip("the compiled ops are not loaded")
    args = _good()
    with pytest.raises((ValueError, RuntimeError), match="concept_ids must be int64"):
        torch.ops.steerkern.steer_(args["hidden"], args["dictionary"], args["concept_ids"].int(), args["coeffs"], "add", None, None)
    with pytest.raises((ValueError, RuntimeError), match="mode must be add, clamp or detect"):
        torch.ops.steerkern.steer_(args["hidden"], args["dictionary"], args["concept_ids"], args["coeffs"], "x", None, None)
    with pytest.raises((ValueError, RuntimeError), match="hidden has d = 0"):
        torch.ops.steerkern.steer_(torch.randn(2, 3, 0), torch.randn(5, 0), args["concept_ids"], args["coeffs"], "add", None, None)
    with pytest.raises((ValueError, RuntimeError), match="hidden has d = 0"):
        torch.ops.steerkern.detect(torch.randn(2, 3, 0), torch.randn(5, 0), False, None, None, None, False)
