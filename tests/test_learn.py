"""steerkern.learn: AxBench-layout reading, DiffMean and ReFT-r1 on a tiny Gemma-2 with planted
concepts, many concepts per batch against one at a time and against AxBench's own loop, held-out
detection, checkpoints, and a learned dictionary saved, loaded and steered with."""

from __future__ import annotations

import importlib
import json

import pandas as pd
import pytest
import torch

from steerkern import ConceptDictionary, demo, learn
from steerkern.hooks import Steerer
from steerkern.learn import axbench_loop, common
from steerkern.learn.encoding import Encoder
from steerkern.learn.scoring import score_examples
from steerkern.models import find_decoder_layers
from tests import planted

reft_module = importlib.import_module("steerkern.learn.reft_r1")


@pytest.fixture(scope="module")
def model():
    return planted.planted_model()


@pytest.fixture(scope="module")
def tokenizer():
    return planted.tokenizer()


@pytest.fixture(scope="module")
def train_rows():
    return planted.rows(seed=0)


@pytest.fixture(scope="module")
def held_out_rows():
    return planted.rows(positives=12, negatives=12, seed=1)


@pytest.fixture(scope="module")
def reft_dictionary(model, tokenizer, train_rows):
    return learn.reft_r1(model, tokenizer, train_rows, layer=planted.LAYER, concepts_per_batch=3)


# --- data ------------------------------------------------------------------------------------


def _write_axbench_folder(folder, rows):
    pd.DataFrame(rows).to_parquet(folder / "train_data.parquet")
    concepts = sorted({(r["concept_id"], r["output_concept"]) for r in rows if r["concept_id"] >= 0})
    lines = [{"concept_id": cid, "concept": text, "ref": f"ref-{cid}", "concept_genres_map": {text: ["text"]}} for cid, text in concepts]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_every_form_of_data_reads_the_same(tmp_path, train_rows):
    _write_axbench_folder(tmp_path, train_rows)
    forms = [train_rows, pd.DataFrame(train_rows), tmp_path, tmp_path / "train_data.parquet", tmp_path / "metadata.jsonl"]
    read = [learn.read_training_data(form) for form in forms]
    for data in read:
        assert [c.concept_id for c in data.concepts] == [0, 1, 2]
        assert [c.text for c in data.concepts] == [f"planted concept {m}" for m in planted.MARKERS]
        assert [len(c.positives) for c in data.concepts] == [24, 24, 24]
        assert all(len(c.negatives) == 24 for c in data.concepts)  # the genre's negatives, shared
        assert data.concepts[1].examples[:24] == data.concepts[1].positives
        assert data.examples == read[0].examples
    assert read[2].concepts[0].ref == "ref-0" and read[0].concepts[0].ref is None  # metadata.jsonl is read beside the data


def test_concepts_are_sorted_by_id_and_negatives_follow_their_genre():
    rows = planted.rows(concepts=1, negatives=3, first_id=7, genre="a") + planted.rows(concepts=1, negatives=2, first_id=3, genre="b")
    data = learn.read_training_data(rows)
    assert [(c.concept_id, c.genre, len(c.negatives)) for c in data.concepts] == [(3, "b", 2), (7, "a", 3)]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "category"} for r in rows], "missing columns category"),
        (lambda rows: [r | {"category": "neutral"} if r["concept_id"] < 0 else r for r in rows], "neutral"),
        (lambda rows: [r for r in rows if r["category"] == "positive"], "no negative examples of its genre 'text'"),
        (lambda rows: [r | {"concept_id": -1} if r["category"] == "positive" else r for r in rows], "concept_id -1"),
        (lambda rows: [], "missing columns|no concepts"),
    ],
)
def test_bad_data_is_named_clearly(change, message, train_rows):
    with pytest.raises(ValueError, match=message):
        learn.read_training_data(change([dict(r) for r in train_rows]))


def test_a_concept_without_examples_is_an_error(tmp_path, train_rows):
    _write_axbench_folder(tmp_path, train_rows)
    with (tmp_path / "metadata.jsonl").open("a") as file:
        file.write(json.dumps({"concept_id": 9, "concept": "nothing", "concept_genres_map": {"nothing": ["text"]}}) + "\n")
    with pytest.raises(ValueError, match=r"concept 9 \('nothing'\) has no positive examples"):
        learn.read_training_data(tmp_path)


def test_missing_file_and_unreadable_parquet(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_data.parquet"):
        learn.read_training_data(tmp_path)
    (tmp_path / "train_data.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read it as parquet"):
        learn.read_training_data(tmp_path)


def test_layer_out_of_range_fails_before_any_work(model, tokenizer, train_rows):
    for method in (learn.diffmean, learn.reft_r1):
        with pytest.raises(ValueError, match="layer 5 is out of range for a model with 2 decoder layers"):
            method(model, tokenizer, train_rows, layer=5)


def test_chat_template_texts_and_prefix_length(tokenizer):
    chat = planted.tokenizer()
    chat.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}"
                          "{% if add_generation_prompt %}<model>{% endif %}")
    encoder = Encoder(chat)
    assert encoder.prefix_length == 1 + len("<user>")
    encoded = encoder.encode(learn.data.Example("hi", "yo"))
    assert chat.decode(encoded.input_ids) == "<bos><user>hi</><model>yo"
    assert encoded.prompt_length == 1 + len("<user>hi</><model>")
    assert Encoder(tokenizer).prefix_length == 1  # no template: only BOS


# --- learning ----------------------------------------------------------------------------------


def test_diffmean_in_one_pass_equals_axbench_per_concept_loop(model, tokenizer, train_rows):
    dictionary = learn.diffmean(model, tokenizer, train_rows, layer=planted.LAYER, batch_size=5)
    setup = common.prepare(model, tokenizer, train_rows, planted.LAYER)
    for row, concept in enumerate(setup.data.concepts):
        examples = [setup.data.examples[i] for i in concept.positives], [setup.data.examples[i] for i in concept.negatives]
        expected = axbench_loop.diffmean_one_concept(model, setup.encoder, *examples, planted.LAYER)
        torch.testing.assert_close(dictionary.weight[row], expected, rtol=1e-5, atol=1e-6)
    assert dictionary.provenance["method"] == "DiffMean" and dictionary.provenance["layer"] == planted.LAYER


@pytest.mark.parametrize("method", ["diffmean", "reft_r1"])
def test_planted_concepts_are_recovered_on_held_out_examples(method, model, tokenizer, train_rows, held_out_rows, reft_dictionary):
    dictionary = reft_dictionary if method == "reft_r1" else learn.diffmean(model, tokenizer, train_rows, layer=planted.LAYER)
    auc = learn.evaluate(model, tokenizer, dictionary, held_out_rows, layer=planted.LAYER)
    assert set(auc) == {0, 1, 2}
    assert min(auc.values()) >= 0.95, auc


def test_an_untrained_row_does_not_detect_the_planted_concepts(model, tokenizer, held_out_rows):
    """The AUROC bar above means something: rows at ReFT-r1's starting point fail it."""
    start = ConceptDictionary(torch.full((3, planted.HIDDEN), reft_module.INITIAL_VALUE), concepts=[
        {"concept_id": i, "concept": f"planted concept {m}"} for i, m in enumerate(planted.MARKERS)])
    auc = learn.evaluate(model, tokenizer, start, held_out_rows, layer=planted.LAYER)
    assert min(auc.values()) < 0.95


def test_many_concepts_per_batch_equal_one_concept_runs_and_axbench_loop(model, tokenizer, train_rows, reft_dictionary):
    hyper = reft_module.Hyperparameters()
    setup = common.prepare(model, tokenizer, train_rows, planted.LAYER)
    one_at_a_time = learn.reft_r1(model, tokenizer, train_rows, layer=planted.LAYER, concepts_per_batch=1)
    torch.testing.assert_close(reft_dictionary.weight, one_at_a_time.weight, rtol=1e-5, atol=1e-6)
    concept = setup.data.concepts[1]
    axbench = axbench_loop.train_one_concept(model, setup.encoder, [setup.encoded[i] for i in concept.examples], planted.LAYER, hyper)
    torch.testing.assert_close(reft_dictionary.weight[1], axbench, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(reft_dictionary.weight[0], reft_dictionary.weight[1], atol=1e-2)


def test_frozen_layers_run_once_per_example_and_give_the_rows_of_running_them_every_step(model, tokenizer, train_rows,
                                                                                       reft_dictionary):
    attention = find_decoder_layers(model).layers[0].self_attn
    calls = []
    handle = attention.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        recomputed = learn.reft_r1(model, tokenizer, train_rows, layer=planted.LAYER, concepts_per_batch=3,
                                   cache_frozen_layers=False)
        steps_run = len(calls)
        calls.clear()
        cached = learn.reft_r1(model, tokenizer, train_rows, layer=planted.LAYER, concepts_per_batch=3)
    finally:
        handle.remove()
    torch.testing.assert_close(cached.weight, reft_dictionary.weight, rtol=0, atol=0)
    torch.testing.assert_close(cached.weight, recomputed.weight, rtol=1e-5, atol=1e-6)
    # Both runs score max_act with the same passes; the cached one trains with a few forward
    # passes over the examples instead of one per step.
    setup = common.prepare(model, tokenizer, train_rows, planted.LAYER)
    steps = max(len(reft_module.concept_batches(len(c.examples), reft_module.Hyperparameters())) for c in setup.data.concepts)
    examples = len({i for c in setup.data.concepts for i in c.examples})
    assert steps_run - len(calls) == steps - -(-examples // 32)
    assert all("forward" not in vars(layer) for layer in find_decoder_layers(model).layers)


def test_reft_r1_rows_are_near_unit_norm_and_model_is_left_as_it_was(model, reft_dictionary):
    torch.testing.assert_close(reft_dictionary.weight.norm(dim=1), torch.ones(3), atol=0.05, rtol=0)
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert reft_dictionary.provenance["hyperparameters"]["topk"] == 8
    assert (reft_dictionary.max_act > 0).all()


def test_max_act_is_the_largest_sentence_score_over_positives(model, tokenizer, train_rows, reft_dictionary):
    setup = common.prepare(model, tokenizer, train_rows, planted.LAYER)
    for row, concept in enumerate(setup.data.concepts):
        encoded = [setup.encoded[i] for i in concept.positives]
        scores = score_examples(model, setup.encoder, planted.LAYER, reft_dictionary.weight, encoded, [[row]] * len(encoded))
        assert float(max(score[0] for score in scores)) == pytest.approx(float(reft_dictionary.max_act[row]), rel=1e-6)


def test_learned_dictionary_saves_loads_and_steers(tmp_path, model, tokenizer, reft_dictionary):
    path = tmp_path / "learned.safetensors"
    reft_dictionary.save(path)
    loaded = ConceptDictionary.load(path)
    torch.testing.assert_close(loaded.weight, reft_dictionary.weight)
    assert loaded.names == reft_dictionary.names and loaded.concepts[0]["genres"] == ["text"]
    assert loaded.provenance["method"] == "ReFT-r1" and loaded.provenance["layer"] == planted.LAYER

    batch = demo.build_tokenizer()(["the cat", "we talked"], return_tensors="pt", padding=True)  # left-padded
    steerer = Steerer(model, loaded, layers=[planted.LAYER])
    with torch.no_grad():
        plain = model(**batch).logits
        with steerer.steer(concepts=[["planted concept #"], ["planted concept @"]], factors=[[2.0], [2.0]]):
            steered = model(**batch).logits
    response = [tokenizer.convert_tokens_to_ids(c) for c in planted.RESPONSES]
    # Steering with a concept makes its response character likelier at the end of the prompt.
    for row, concept in enumerate([0, 1]):
        assert steered[row, -1].log_softmax(-1)[response[concept]] > plain[row, -1].log_softmax(-1)[response[concept]] + 1.0
