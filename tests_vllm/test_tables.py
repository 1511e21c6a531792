"""Programs in their flat form, and the row tables they are written to (no engine)."""

import pytest
import torch

import steerkern.vllm as skv
from steerkern import ConceptDictionary, reference
from steerkern.vllm.programs import Program, parse
from steerkern.vllm.tables import SteeringTables


def test_program_flat_form_round_trips():
    flat = skv.program([12, "derivatives"], [4.0, 2.0], mode="clamp", positions="prompt", prefix_length=1)
    assert flat == {"steerkern_concepts": [12, "derivatives"], "steerkern_factors": [4.0, 2.0],
                    "steerkern_mode": "clamp", "steerkern_positions": "prompt", "steerkern_prefix_length": 1}
    assert all(isinstance(value, (str, int, float, list)) for value in flat.values())  # what vllm_xargs carries
    assert parse(flat) == Program((12, "derivatives"), (4.0, 2.0), "clamp", "prompt", 1)
    assert skv.program(3) == skv.program([3], [1.0]) and skv.program([3, 4], 2.0)["steerkern_factors"] == [2.0, 2.0]
    assert parse(None) is None and parse({"other_extension": 1}) is None


def test_cache_salt_follows_the_program():
    a, b = parse(skv.program(3, 2.0)), parse(skv.program(3, 2.0, mode="clamp"))
    assert a.cache_salt() == parse(skv.program([3], [2.0])).cache_salt() != b.cache_salt()


def test_slots_scale_factors_by_max_act_and_pad():
    dictionary = ConceptDictionary(torch.randn(5, 8), max_act=torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]),
                                   concepts=[f"c{i}" for i in range(5)])
    ids, coeffs = parse(skv.program([1, "c3"], [0.5, -1.0])).slots(dictionary, 4)
    assert ids.tolist() == [1, 3, -1, -1] and coeffs.tolist() == [1.0, -4.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="max_concepts=1"):
        parse(skv.program([1, 2])).slots(dictionary, 1)


def make_tables(clamp=True):
    tables = SteeringTables(groups=1, max_requests=4, max_tokens=16, slots=2, clamp=clamp, device="cpu")
    ids, coeffs = torch.tensor([5, -1]), torch.tensor([1.5, 0.0])
    tables.set_request(0, Program((5,), (1.0,)), [(ids, coeffs)], prompt_length=3)
    tables.set_request(1, None, None, prompt_length=2)
    tables.set_request(2, Program((7,), (1.0,), positions="generation", prefix_length=1),
                       [(torch.tensor([7, -1]), torch.tensor([2.0, 0.0]))], prompt_length=2)
    tables.set_request(3, Program((9,), (1.0,), mode="clamp", positions="prompt", prefix_length=1),
                       [(torch.tensor([9, -1]), torch.tensor([3.0, 0.0]))], prompt_length=2)
    tables.publish()
    return tables


def test_fill_gives_each_token_its_requests_program_where_it_applies():
    tables = make_tables()
    # A step: request 0 prefills 3 tokens, 1 and 2 decode one, 3 recomputes its last prompt token
    # and its first generated one (as after a preemption); then 2 padding rows.
    positions = torch.tensor([0, 1, 2, 5, 2, 1, 2, 0, 0])
    query_start_loc = torch.tensor([0, 3, 4, 5, 7], dtype=torch.int32)
    tables.fill(positions, query_start_loc)
    assert tables.token_ids[0, :9, 0].tolist() == [5, 5, 5, -1, 7, 9, -1, -1, -1]
    assert tables.token_clamped[:7].tolist() == [False] * 5 + [True] * 2  # request 3's rows clamp
    assert tables.token_coeffs[0, :6, 0].tolist() == [1.5, 1.5, 1.5, 0.0, 2.0, 3.0]
    tables.fill(positions, None)  # a dummy run steers nothing
    assert (tables.token_ids[0, :9] == -1).all()


def test_moves_and_removals_follow_the_persistent_batch():
    tables = make_tables(clamp=False)
    tables.move_request(0, 1, swap=True)  # 0 <-> 1
    tables.move_request(2, 0, swap=False)  # 2 -> 0
    tables.clear_request(3)
    tables.publish()
    tables.fill(torch.tensor([2, 2, 1, 0]), torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32))
    assert tables.token_ids[0, :4, 0].tolist() == [7, 5, -1, -1]  # rows 0 and 1 now hold requests 2 and 0


def test_one_steer_call_equals_steering_the_stream_add_rows_then_clamp_rows():
    tables = make_tables()
    tables.fill(torch.tensor([0, 1, 2, 5, 2, 1, 2, 0, 0]), torch.tensor([0, 3, 4, 5, 7], dtype=torch.int32))
    generator = torch.Generator().manual_seed(0)
    hidden, residual = torch.randn(2, 9, 8, generator=generator).unbind(0)
    dictionary = torch.nn.functional.normalize(torch.randn(10, 8, generator=generator), dim=1)
    steered, passed_on = tables.steer(0, dictionary, None, hidden.clone(), residual.clone())
    # What the layer's sum was steered to before the op read the residual itself: the stream
    # formed, its add rows steered, then its clamp rows.
    ids, coeffs, clamped = tables.token_ids[0, :9], tables.token_coeffs[0, :9], tables.token_clamped[:9]
    stream, _ = reference.steer(hidden + residual, dictionary, ids.masked_fill(clamped[:, None], -1), coeffs)
    stream, _ = reference.steer(stream, dictionary, ids.masked_fill(~clamped[:, None], -1), coeffs, mode="clamp")
    assert torch.equal(passed_on, residual)  # the residual is passed on untouched
    torch.testing.assert_close(steered + passed_on, stream)
    assert clamped.any() and not torch.equal(steered[clamped], hidden[clamped])  # a clamp row was steered
