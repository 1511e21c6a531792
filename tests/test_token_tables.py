"""The serving plugin's per-token tables: ``fill_token_tables_`` against ``reference.token_tables``
on fresh random steps (prefills, decodes, recomputed tokens, padding rows, requests with no
tokens), the rows past the step left as they were, the op's registration and its errors."""

from __future__ import annotations

import pytest
import torch

import steerkern
from steerkern import ops, reference
from tests.table_cases import MAX_TOKENS, request_tables, step, token_buffers

compiled = pytest.mark.skipif(steerkern.build_info()["backend"] != "compiled", reason="steerkern._C is not built")


def check_fill(tables, positions, query_start_loc, groups, slots, device):
    ids, coeffs, clamped = token_buffers(groups, slots, device)
    ops.fill_token_tables_(ids, coeffs, clamped, positions, query_start_loc, **tables)
    expected = reference.token_tables(positions, query_start_loc, **tables)
    tokens = positions.shape[0]
    assert torch.equal(ids[:, :tokens], expected[0])
    assert torch.equal(coeffs[:, :tokens], expected[1])
    assert torch.equal(clamped[:tokens], expected[2])
    assert (ids[:, tokens:] == 777).all() and coeffs[:, tokens:].isnan().all() and clamped[tokens:].all()
    return ids[:, :tokens]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("groups,slots,max_requests", [(1, 4, 6), (3, 1, 6), (2, 5, 1)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_fill_equals_the_reference_on_random_steps(device, groups, slots, max_requests, index_dtype):
    gen = torch.Generator().manual_seed(groups * 100 + slots * 10 + max_requests)
    steered_rows = 0
    for _ in range(12):
        tables = request_tables(groups, max_requests, slots, device, gen)
        requests = int(torch.randint(0, max_requests + 1, (), generator=gen))
        positions, query_start_loc = step(requests, device, gen, index_dtype)
        ids = check_fill(tables, positions, query_start_loc, groups, slots, device)
        steered_rows += int((ids >= 0).any(-1).sum())
    assert steered_rows > 0  # the random steps did steer some rows


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_dummy_run_steers_nothing(device):
    gen = torch.Generator().manual_seed(1)
    tables = request_tables(2, 4, 3, device, gen)
    tables["request_kind"].fill_(reference.ALL)
    positions = torch.arange(5, device=device)
    ids = check_fill(tables, positions, None, 2, 3, device)
    assert (ids == -1).all()


@compiled
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck_fill_token_tables(device):
    gen = torch.Generator().manual_seed(2)
    tables = request_tables(2, 5, 3, device, gen)
    positions, query_start_loc = step(5, device, gen)
    for starts in (query_start_loc, None):
        torch.library.opcheck(torch.ops.steerkern.fill_token_tables_.default,
                              (*token_buffers(2, 3, device), positions, starts, *tables.values()))


@compiled
@pytest.mark.parametrize("name,value,message", [
    ("positions", torch.zeros(MAX_TOKENS + 1, dtype=torch.long), "at most 48 tokens"),
    ("positions", torch.zeros(4, dtype=torch.int32), "positions must be Long"),
    ("query_start_loc", torch.tensor([0.0, 2.0]), "query_start_loc must be int32 or int64"),
    ("query_start_loc", torch.zeros((), dtype=torch.int32), r"query_start_loc must be \(requests \+ 1,\)"),
    ("request_ids", torch.zeros(2, 5, 4, dtype=torch.long), "the request ids must be"),
    ("request_kind", torch.zeros(5, dtype=torch.long), "the request kinds must be Int"),
    ("request_prompt", torch.zeros(4, dtype=torch.long), "the request prompt lengths must have shape"),
    ("ids", torch.zeros(2, MAX_TOKENS, 3, dtype=torch.int32), "the token ids must be Long"),
    ("coeffs", torch.zeros(2, MAX_TOKENS, 2), "the token coeffs must have shape"),
    ("clamped", torch.zeros(MAX_TOKENS), "the token clamped flags must be Bool"),
])
def test_bad_tables_are_refused_before_anything_is_written(name, value, message):
    gen = torch.Generator().manual_seed(3)
    tables = request_tables(2, 5, 3, "cpu", gen)
    positions, query_start_loc = step(5, "cpu", gen)
    ids, coeffs, clamped = token_buffers(2, 3, "cpu")
    args = dict(ids=ids, coeffs=coeffs, clamped=clamped, positions=positions, query_start_loc=query_start_loc,
                **tables)
    args[name] = value
    with pytest.raises(ValueError, match=message):
        torch.ops.steerkern.fill_token_tables_(**args)
    assert (ids == 777).all() and coeffs.isnan().all() and clamped.all()
