"""The ops are real torch custom ops: opcheck passes, torch.compile(fullgraph=True) matches eager,
and the reference fallback works when the compiled module is missing or not wanted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

import steerkern
from steerkern import _backend, reference
from tests.op_cases import make_program, unit_rows

compiled = pytest.mark.skipif(steerkern.build_info()["backend"] != "compiled", reason="steerkern._C is not built")


def _steer_args(device, dtype=torch.float32, per_row=False):
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 5, 24, generator=gen).to(dtype=dtype, device=device)
    dictionary = unit_rows(9, 24, dtype, device, gen)
    ids, coeffs = make_program((2, 5, 3) if per_row else (2, 3), 9, True, device, gen)
    mask = torch.tensor([[True, False, True, True, False], [True] * 5], device=device)
    bias = torch.randn(9, generator=gen).to(device)
    return hidden, dictionary, ids, coeffs, mask, bias


@compiled
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["add", "clamp", "detect"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_steer(device, mode, dtype):
    hidden, dictionary, ids, coeffs, mask, bias = _steer_args(device, dtype, per_row=mode == "clamp")
    torch.library.opcheck(torch.ops.steerkern.steer_.default, (hidden, dictionary, ids, coeffs, mode, mask, bias))
    torch.library.opcheck(torch.ops.steerkern.steer_.default, (hidden, dictionary, ids, coeffs, mode, None, None))


@compiled
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("reduce_max", [False, True])
def test_opcheck_detect(device, reduce_max):
    hidden, dictionary, _, _, mask, bias = _steer_args(device)
    threshold = torch.rand(9, device=device) * 0.1
    for args in ((hidden, dictionary, False, bias, threshold, mask, reduce_max),
                 (hidden, dictionary.T.contiguous(), True, None, None, None, reduce_max)):
        torch.library.opcheck(torch.ops.steerkern.detect.default, args)


@compiled
def test_compile_fullgraph_matches_eager():
    def steer_and_read(hidden, dictionary, ids, coeffs, mask):
        hidden = hidden * 1.0  # a fresh buffer: the op mutates it inside the graph
        acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mode="clamp", mask=mask)
        top = steerkern.detect(hidden, dictionary, reduce="max")
        return hidden, acts, top

    hidden, dictionary, ids, coeffs, mask, _ = _steer_args("cpu", per_row=True)
    eager = steer_and_read(hidden, dictionary, ids, coeffs, mask)
    compiled_fn = torch.compile(steer_and_read, fullgraph=True)
    for got, want in zip(compiled_fn(hidden, dictionary, ids, coeffs, mask), eager):
        torch.testing.assert_close(got, want)


def test_reference_backend_forced_by_environment(monkeypatch):
    monkeypatch.setenv("STEERKERN_BACKEND", "reference")
    assert steerkern.build_info()["backend"] == "reference"
    hidden, dictionary, ids, coeffs, mask, bias = _steer_args("cpu")
    expected, expected_acts = reference.steer(hidden, dictionary, ids, coeffs, mask=mask, bias=bias)
    acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mask=mask, bias=bias)
    assert torch.equal(hidden, expected) and torch.equal(acts, expected_acts)


def test_missing_compiled_module_falls_back_with_one_warning():
    script = (
        "import sys, warnings, torch\n"
        "sys.modules['steerkern._C'] = None\n"  # makes `from . import _C` raise ImportError
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import steerkern\n"
        "    h = torch.randn(3, 8); w = torch.randn(4, 8)\n"
        "    for _ in range(3):\n"
        "        steerkern.steer_(h, w, torch.tensor([[1]] * 3), torch.ones(3, 1))\n"
        "msgs = [str(c.message) for c in caught if 'steerkern._C' in str(c.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert steerkern.build_info()['backend'] == 'reference'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "STEERKERN_BACKEND"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_build_info_reports_versions():
    info = steerkern.build_info()
    assert info["torch"] == torch.__version__
    if info["backend"] == "compiled":
        assert info["built_torch"] == torch.__version__
        if info["compiled_with_cuda"]:
            assert info["cuda_archs"] and all(re.fullmatch(r"sm_\d+a?", arch) for arch in info["cuda_archs"])


@pytest.mark.cuda
def test_the_devices_arch_is_compiled_in():
    info = steerkern.build_info()
    assert info["compiled_with_cuda"], "the CUDA kernels were not built"
    major, minor = torch.cuda.get_device_capability()
    assert f"sm_{major}{minor}" in info["cuda_archs"], (info["cuda_archs"], torch.cuda.get_device_name())


class _CompiledWithoutCuda:
    WITH_CUDA = 0


def _without_cuda_kernels(monkeypatch):
    monkeypatch.delenv("STEERKERN_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_compiled", _CompiledWithoutCuda())
    monkeypatch.setattr(_backend, "_warned_no_cuda", False)


def test_compiled_module_without_cuda_leaves_cuda_tensors_to_the_reference(monkeypatch):
    _without_cuda_kernels(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [_backend.use_compiled(torch.device("cuda", 0)) for _ in range(3)] == [False] * 3
        assert _backend.use_compiled(torch.device("cpu")) and _backend.use_compiled()
    messages = [str(w.message) for w in caught if "built without CUDA" in str(w.message)]
    assert len(messages) == 1, messages


@pytest.mark.cuda
def test_cuda_tensors_run_the_reference_when_compiled_without_cuda(monkeypatch):
    _without_cuda_kernels(monkeypatch)
    hidden, dictionary, ids, coeffs, mask, bias = _steer_args("cuda")
    expected, expected_acts = reference.steer(hidden, dictionary, ids, coeffs, mask=mask, bias=bias)
    with pytest.warns(RuntimeWarning, match="built without CUDA"):
        acts = steerkern.steer_(hidden, dictionary, ids, coeffs, mask=mask, bias=bias)
    assert torch.equal(hidden, expected) and torch.equal(acts, expected_acts)
    scores = steerkern.detect(hidden, dictionary, bias=bias)
    assert torch.equal(scores, reference.detect(hidden, dictionary, bias=bias))


@compiled
@pytest.mark.parametrize("isa", ["base", "avx", "avx2", "avx512"])
def test_every_cpu_instruction_set_matches_reference(isa):
    # The CPU kernel is compiled once per instruction set; cap it to check the narrower copies too.
    script = (
        "import torch, steerkern\n"
        "from steerkern import reference\n"
        "from tests.op_cases import assert_hidden_close, make_program, unit_rows\n"
        "g = torch.Generator().manual_seed(11)\n"
        "for dtype in (torch.float32, torch.bfloat16, torch.float16):\n"
        "    h = torch.randn(37, 777, generator=g).to(dtype)\n"
        "    w = unit_rows(50, 777, dtype, 'cpu', g)\n"
        "    ids, c = make_program((37, 6), 50, True, 'cpu', g)\n"
        "    want, want_acts = reference.steer(h, w, ids, c, mode='clamp')\n"
        "    acts = steerkern.steer_(h, w, ids, c, mode='clamp')\n"
        "    assert_hidden_close(h, want)\n"
        "    torch.testing.assert_close(acts, want_acts, rtol=1e-5, atol=1e-3)\n"
        "print(steerkern.build_info()['cpu_isa'])\n"
    )
    env = {**os.environ, "STEERKERN_CPU_ISA": isa}
    root = os.path.dirname(os.path.dirname(__file__))
    used = subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=root, capture_output=True, text=True)
    order = ["base", "avx", "avx2", "avx512"]
    assert used.stdout.strip() in order[: order.index(isa) + 1]
