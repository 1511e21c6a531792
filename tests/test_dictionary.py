"""ConceptDictionary: construction, search, round trips, foreign formats, bad files, mapped loading."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import save_file

import steerkern
from steerkern.dictionary import ConceptDictionary
from steerkern.formats import native
from tests.dictionary_files import (
    CONCEPTS,
    metadata_lines,
    random_rows,
    random_sae,
    truncate,
    write_axbench_release,
    write_axbench_run,
    write_jsonl,
    write_params_npz,
)

ROWS, WIDTH = len(CONCEPTS), 769


def concept_records():
    return [
        {"concept_id": 100 + row, "concept": text, "ref": f"ref-{row}", "genres": genres}
        for row, (text, genres) in enumerate(CONCEPTS)
    ]


def reft_dictionary(width=WIDTH, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    return ConceptDictionary(
        random_rows(ROWS, width, seed=2, dtype=dtype),
        bias=torch.randn(ROWS, generator=generator).to(dtype),
        max_act=torch.rand(ROWS, generator=generator) * 50 + 1,
        thresholds=torch.tensor([0.5, math.nan, 1.5, 2.0, math.nan, 3.0, 0.25]),
        concepts=concept_records(),
        provenance={"model_name": "google/gemma-2-2b-it", "layer": 20, "component": "res", "method": "LsReFT"},
    )


def sae_dictionary(width=WIDTH):
    sae = random_sae(ROWS, width, seed=3)
    return ConceptDictionary(
        sae["W_dec"],
        encoder=sae["W_enc"],
        b_enc=sae["b_enc"],
        threshold=sae["threshold"],
        b_dec=sae["b_dec"],
        concepts=[text for text, _ in CONCEPTS],
    )


def assert_same(loaded: ConceptDictionary, original: ConceptDictionary):
    for name in ("weight", "bias", "max_act", "thresholds", "encoder", "b_enc", "threshold", "b_dec"):
        expected, actual = getattr(original, name), getattr(loaded, name)
        if expected is None:
            assert actual is None, name
        else:
            assert actual.dtype == expected.dtype, name
            torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=name)
    assert loaded.concepts == original.concepts


def saved(tmp_path, dictionary=None):
    path = tmp_path / "d.safetensors"
    (dictionary or reft_dictionary(width=32)).save(path)
    return path


def rewrite_header(path, **changes):
    with safe_open(path, framework="pt") as file:
        header, tensors = file.metadata(), {name: file.get_tensor(name) for name in file.keys()}
    header.update(changes)
    save_file({name: tensor.clone() for name, tensor in tensors.items()}, path, metadata=header)


# --- construction -----------------------------------------------------------------------------


def test_built_from_tensors_has_defaults():
    weight = random_rows(ROWS, WIDTH)
    dictionary = ConceptDictionary(weight, concepts=[text for text, _ in CONCEPTS])
    assert len(dictionary) == ROWS and dictionary.d == WIDTH
    assert dictionary.weight is weight
    assert dictionary.dtype == torch.float32 and dictionary.device == torch.device("cpu")
    assert dictionary.max_act.dtype == torch.float32 and torch.equal(dictionary.max_act, torch.ones(ROWS))
    assert dictionary.thresholds is None and dictionary.bias is None and dictionary.encoder is None
    assert dictionary.names == [text for text, _ in CONCEPTS]
    assert dictionary.concepts[3] == {"concept_id": 3, "concept": "the derivative", "ref": None, "genres": []}
    assert set(dictionary.provenance) == {"model_name", "layer", "component", "method", "source", "format"}
    assert ConceptDictionary(weight).names[2] == "concept 2"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"weight": torch.randn(WIDTH)}, "weight must be a 2-D floating-point"),
        ({"weight": torch.ones(ROWS, WIDTH, dtype=torch.int64)}, "weight must be a 2-D floating-point"),
        ({"weight": torch.randn(0, WIDTH)}, "no rows"),
        ({"bias": torch.randn(ROWS + 1)}, r"bias must be a floating-point tensor of shape \(7,\)"),
        ({"max_act": torch.randn(ROWS - 1)}, r"max_act must have shape \(7,\)"),
        ({"max_act": torch.tensor([1.0] * (ROWS - 1) + [math.inf])}, "max_act holds NaN or Inf at row 6"),
        ({"thresholds": torch.randn(2, ROWS)}, "thresholds must have shape"),
        ({"encoder": torch.randn(ROWS, WIDTH)}, r"encoder must be .* shape \(769, 7\)"),
        ({"b_enc": torch.randn(ROWS)}, "pass encoder as well"),
        ({"encoder": torch.randn(WIDTH, ROWS), "b_dec": torch.randn(ROWS)}, r"b_dec must be .* shape \(769,\)"),
        ({"concepts": ["one", "two"]}, "describes 2 concepts but weight has 7 rows"),
        ({"concepts": [{"concept_id": 1, "concept": "x"}] * ROWS}, "concept_id 1 appears more than once"),
        ({"concepts": [{"text": "x"}] * ROWS}, r"concepts\[0\] must be a text or a dict"),
        ({"provenance": ["not", "a", "dict"]}, "provenance must be a dict"),
    ],
)
def test_constructor_rejects_bad_input(changes, message):
    arguments = {"weight": random_rows(ROWS, WIDTH), **changes}
    with pytest.raises(ValueError, match=message):
        ConceptDictionary(**arguments)


def test_to_returns_a_moved_copy_and_keeps_float32_activations():
    original = reft_dictionary()
    half = original.to(dtype=torch.bfloat16)
    assert half is not original and half.dtype == torch.bfloat16
    assert {half.bias.dtype, half.max_act.dtype, half.thresholds.dtype} == {torch.float32}
    assert torch.equal(half.bias, original.bias)
    assert original.dtype == torch.float32
    torch.testing.assert_close(half.weight, original.weight.bfloat16(), rtol=0, atol=0)
    assert half.concepts == original.concepts and half.concepts is not original.concepts
    sae = sae_dictionary().to(dtype=torch.float16)
    assert {sae.encoder.dtype, sae.b_dec.dtype} == {torch.float16}
    assert {sae.b_enc.dtype, sae.threshold.dtype} == {torch.float32}
    assert torch.equal(sae.threshold, sae_dictionary().threshold)
    with pytest.raises(ValueError, match="floating-point"):
        original.to(dtype=torch.int32)


def test_detection_offsets_given_in_half_precision_are_kept_float32():
    dictionary = ConceptDictionary(random_rows(ROWS, WIDTH).half(), bias=torch.randn(ROWS).half())
    assert dictionary.dtype == torch.float16 and dictionary.bias.dtype == torch.float32


def _poisoned(name, index, value):
    arguments = {"weight": random_rows(ROWS, WIDTH), "bias": torch.zeros(ROWS), "max_act": torch.ones(ROWS),
                 "thresholds": torch.ones(ROWS), "encoder": random_rows(ROWS, WIDTH).T.contiguous(),
                 "b_enc": torch.zeros(ROWS), "threshold": torch.zeros(ROWS), "b_dec": torch.zeros(WIDTH)}
    target = arguments[name]
    if name == "encoder":
        target[100, index] = value
    elif target.dim() == 2:
        target[index, 100] = value
    else:
        target[index] = value
    return arguments


@pytest.mark.parametrize("name", ["weight", "bias", "max_act", "thresholds", "encoder", "b_enc", "threshold", "b_dec"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused_naming_the_first_bad_row(name, value):
    if name == "thresholds" and math.isnan(value):
        assert torch.isnan(ConceptDictionary(**_poisoned(name, 4, value)).thresholds[4])  # NaN = unknown
        return
    where = {"b_dec": "feature", "encoder": "column"}.get(name, "row")
    with pytest.raises(ValueError, match=f"{name} holds .*Inf at {where} 4;"):
        ConceptDictionary(**_poisoned(name, 4, value))


def test_non_finite_rows_beyond_the_first_chunk_are_found():
    weight = random_rows(3000, 769)
    weight[2999, 0] = math.nan
    with pytest.raises(ValueError, match="weight holds NaN or Inf at row 2999"):
        ConceptDictionary(weight)


def test_non_finite_file_is_refused_at_load(tmp_path):
    path = saved(tmp_path)
    tensors = {}
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
        for key in file.keys():
            tensors[key] = file.get_tensor(key)
    tensors["weight"][5, 3] = math.inf
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match="weight holds NaN or Inf at row 5") as error:
        ConceptDictionary.load(path)
    assert str(error.value).startswith(str(path))


def test_converting_to_float16_that_overflows_is_refused():
    weight = random_rows(ROWS, WIDTH)
    weight[2, 0] = 1e6
    with pytest.raises(ValueError, match="weight holds NaN or Inf at row 2"):
        ConceptDictionary(weight).to(dtype=torch.float16)


# --- subsets and search -------------------------------------------------------------------------


def test_subset_keeps_rows_metadata_and_original_ids():
    original = sae_dictionary()
    chosen = original.subset([5, "legal case", 1])
    assert chosen.names == [CONCEPTS[5][0], CONCEPTS[4][0], CONCEPTS[1][0]]
    assert [concept["concept_id"] for concept in chosen.concepts] == [5, 4, 1]
    torch.testing.assert_close(chosen.weight, original.weight[[5, 4, 1]], rtol=0, atol=0)
    torch.testing.assert_close(chosen.encoder, original.encoder[:, [5, 4, 1]], rtol=0, atol=0)
    torch.testing.assert_close(chosen.threshold, original.threshold[[5, 4, 1]], rtol=0, atol=0)
    assert chosen.b_dec is original.b_dec
    assert chosen.lookup(4) == 1 and chosen.lookup(5) == 0
    assert len(original) == ROWS


def test_subset_rejects_bad_rows():
    dictionary = reft_dictionary()
    with pytest.raises(IndexError, match="row 7 is outside"):
        dictionary.subset([0, 7])
    with pytest.raises(ValueError, match=r"rows \[2\] more than once"):
        dictionary.subset([2, 3, 2])
    with pytest.raises(ValueError, match="at least one row"):
        dictionary.subset([])


def test_find_is_case_insensitive_and_ranked():
    dictionary = reft_dictionary()
    assert dictionary.find("DERIVATIVE") == [3, 0]
    assert dictionary.find("wedding") == [6, 1]
    assert dictionary.find("wedding", limit=1) == [6]
    assert dictionary.find("no such concept") == []
    with pytest.raises(ValueError, match="non-empty"):
        dictionary.find("  ")


def test_lookup_by_id_and_text():
    dictionary = reft_dictionary()  # concept ids are 100 + row
    assert dictionary.lookup(102) == 2
    assert dictionary.lookup(torch.tensor(104)) == 4
    assert dictionary.lookup("the derivative") == 3
    assert dictionary.lookup("wedding") == 6  # exact, ignoring case, beats the longer text
    assert dictionary.lookup("template") == 5  # a fragment only one concept contains
    with pytest.raises(KeyError, match="no concept with id 3"):
        dictionary.lookup(3)
    with pytest.raises(KeyError, match="matches 2 concepts"):
        dictionary.lookup("deriv")
    with pytest.raises(KeyError, match="no concept .* matches 'astronomy'"):
        dictionary.lookup("astronomy")


def test_by_genre():
    dictionary = reft_dictionary()
    assert dictionary.by_genre("code") == [2, 5]
    assert dictionary.by_genre("MATH") == [0, 3]
    assert dictionary.by_genre("poetry") == []


def test_check_hidden_size_names_the_source(tmp_path):
    path = tmp_path / "gemma-2b-l20.safetensors"
    reft_dictionary().save(path)
    dictionary = ConceptDictionary.load(path)
    dictionary.check_hidden_size(WIDTH)
    with pytest.raises(ValueError, match=r"gemma-2b-l20.safetensors.*d=769.*hidden size is 3584.*gemma-2-2b-it"):
        dictionary.check_hidden_size(3584, where="Gemma2ForCausalLM")


def test_detection_kwargs_feed_steerkern_detect():
    hidden = torch.randn(2, 5, 64)
    reft = reft_dictionary(width=64)
    expected = torch.relu(hidden @ reft.weight.T + reft.bias)
    torch.testing.assert_close(steerkern.detect(hidden, reft.weight, **reft.detection_kwargs()), expected)
    sae = sae_dictionary(width=64)
    pre = hidden @ sae.encoder + sae.b_enc
    expected = torch.where(pre > sae.threshold, torch.relu(pre), torch.zeros_like(pre))
    torch.testing.assert_close(steerkern.detect(hidden, sae.weight, **sae.detection_kwargs()), expected)


# --- steerkern's own format -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, dtype",
    [(reft_dictionary, torch.float32), (reft_dictionary, torch.bfloat16), (sae_dictionary, torch.float32)],
)
def test_save_load_round_trip(tmp_path, make, dtype):
    original = make().to(dtype=dtype)
    path = tmp_path / "dictionary.safetensors"
    original.save(path)
    loaded = ConceptDictionary.load(path)
    assert_same(loaded, original)
    assert loaded.provenance == {**original.provenance, "source": str(path), "format": "steerkern"}
    loaded.save(path)  # overwriting the file the dictionary is mapped from
    assert_same(ConceptDictionary.load(path), original)


def test_round_trip_of_a_subset_keeps_ids_and_unicode(tmp_path):
    original = ConceptDictionary(random_rows(3, 16), concepts=["café ☕", "naïve", "日本語"]).subset([2, 0])
    original.save(tmp_path / "small.safetensors")
    loaded = ConceptDictionary.load(tmp_path)  # a folder holding one dictionary
    assert loaded.names == ["日本語", "café ☕"] and loaded.lookup(2) == 0


def test_load_into_dtype(tmp_path):
    reft_dictionary().save(tmp_path / "d.safetensors")
    loaded = ConceptDictionary.load(tmp_path / "d.safetensors", dtype=torch.float16, device="cpu")
    assert loaded.dtype == torch.float16 and loaded.bias.dtype == torch.float32
    assert loaded.max_act.dtype == torch.float32


def test_save_rejects_other_suffixes_and_missing_folders(tmp_path):
    dictionary = reft_dictionary()
    with pytest.raises(ValueError, match=r"d.pt: steerkern saves dictionaries as .safetensors"):
        dictionary.save(tmp_path / "d.pt")
    with pytest.raises(FileNotFoundError, match="missing-folder does not exist"):
        dictionary.save(tmp_path / "missing-folder" / "d.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = saved(tmp_path)
    previous = path.read_bytes()

    def disk_full(tensors, filename, metadata):
        Path(filename).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(native, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        reft_dictionary(width=64).save(path)
    assert path.read_bytes() == previous and list(tmp_path.iterdir()) == [path]


# --- AxBench ------------------------------------------------------------------------------------


def test_axbench_release_folder_with_layer_subfolder(tmp_path):
    weight = random_rows(ROWS, WIDTH, seed=4)
    acts = {"max_act": {"0": 12.5, "3": 40.0}, "thresholds": {"3": 2.5}}
    write_axbench_release(tmp_path, weight, acts=acts)
    for dictionary in (ConceptDictionary.load(tmp_path), ConceptDictionary.load(tmp_path, subfolder="l20")):
        torch.testing.assert_close(dictionary.weight, weight, rtol=0, atol=0)
        assert dictionary.max_act.tolist() == [12.5, 1.0, 1.0, 40.0, 1.0, 1.0, 1.0]
        assert dictionary.thresholds[3] == 2.5 and dictionary.thresholds.isnan().sum() == ROWS - 1
        assert dictionary.names == [text for text, _ in CONCEPTS]
        assert dictionary.concepts[2]["genres"] == ["code"]
        assert dictionary.concepts[2]["ref"].endswith("/1002")
        assert dictionary.bias is None
        assert dictionary.provenance["layer"] == 20 and dictionary.provenance["format"] == "axbench"


def test_axbench_release_without_acts(tmp_path):
    write_axbench_release(tmp_path, random_rows(ROWS, 32), layer=10)
    dictionary = ConceptDictionary.load(tmp_path / "l10" / "weight.pt")
    assert torch.equal(dictionary.max_act, torch.ones(ROWS)) and dictionary.thresholds is None
    assert dictionary.provenance["layer"] == 10


def test_axbench_training_output(tmp_path):
    generator = torch.Generator().manual_seed(5)
    lsreft = (random_rows(ROWS, WIDTH, seed=6), torch.zeros(ROWS))
    diffmean = (random_rows(ROWS, WIDTH, seed=7), torch.randn(ROWS, generator=generator))
    sae = random_sae(ROWS, WIDTH, seed=8)
    train = write_axbench_run(tmp_path / "run", {"LsReFT": lsreft, "DiffMean": diffmean}, sae=sae)
    with pytest.raises(ValueError, match="several dictionaries .*DiffMean_weight.pt.*LsReFT_weight.pt"):
        ConceptDictionary.load(tmp_path / "run")

    dictionary = ConceptDictionary.load(train / "DiffMean_weight.pt")
    torch.testing.assert_close(dictionary.weight, diffmean[0], rtol=0, atol=0)
    torch.testing.assert_close(dictionary.bias, diffmean[1], rtol=0, atol=0)
    assert dictionary.names[1] == CONCEPTS[1][0]
    assert dictionary.provenance == {
        "model_name": "google/gemma-2-2b-it",
        "layer": 20,
        "component": "res",
        "method": "DiffMean",
        "source": str(train / "DiffMean_weight.pt"),
        "format": "axbench",
    }

    pruned = ConceptDictionary.load(train / "GemmaScopeSAE.pt")
    torch.testing.assert_close(pruned.weight, sae["W_dec"], rtol=0, atol=0)
    torch.testing.assert_close(pruned.encoder, sae["W_enc"], rtol=0, atol=0)
    torch.testing.assert_close(pruned.threshold, sae["threshold"], rtol=0, atol=0)
    assert pruned.names == dictionary.names and pruned.provenance["format"] == "gemmascope-pt"
    assert pruned.detection_kwargs()["encoder"] is pruned.encoder


def test_axbench_folder_then_steerkern_round_trip(tmp_path):
    write_axbench_release(tmp_path / "release", random_rows(ROWS, WIDTH), acts={"max_act": {"1": 3.0}})
    original = ConceptDictionary.load(tmp_path / "release")
    original.save(tmp_path / "converted.safetensors")
    loaded = ConceptDictionary.load(tmp_path / "converted.safetensors")
    assert_same(loaded, original)
    assert loaded.provenance["layer"] == 20


# --- GemmaScope ---------------------------------------------------------------------------------


def test_gemmascope_params_npz(tmp_path):
    sae = random_sae(ROWS, WIDTH, seed=9)
    path = write_params_npz(tmp_path, sae)
    dictionary = ConceptDictionary.load(path)
    for name, field in (
        ("W_dec", "weight"),
        ("W_enc", "encoder"),
        ("b_enc", "b_enc"),
        ("threshold", "threshold"),
        ("b_dec", "b_dec"),
    ):
        torch.testing.assert_close(getattr(dictionary, field), sae[name], rtol=0, atol=0)
    assert dictionary.names[4] == "concept 4"
    assert dictionary.provenance["layer"] == 20 and dictionary.provenance["format"] == "gemmascope-npz"


def test_sae_stored_as_plain_safetensors(tmp_path):
    sae = random_sae(ROWS, 48, seed=10)
    save_file(sae, tmp_path / "sae_weights.safetensors")
    dictionary = ConceptDictionary.load(tmp_path / "sae_weights.safetensors")
    torch.testing.assert_close(dictionary.encoder, sae["W_enc"], rtol=0, atol=0)
    assert dictionary.provenance["format"] == "sae-safetensors"


# --- Hugging Face Hub ---------------------------------------------------------------------------


def test_hub_repo_id_downloads_the_subfolder(tmp_path, monkeypatch):
    snapshot = tmp_path / "snapshot"
    write_axbench_release(snapshot, random_rows(ROWS, 32), acts={"max_act": {"2": 7.0}})
    requests = []

    def snapshot_download(repo_id, allow_patterns=None):
        requests.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    dictionary = ConceptDictionary.load("pyvene/gemma-reft-r1-2b-it-res", subfolder="l20")
    assert requests == [("pyvene/gemma-reft-r1-2b-it-res", ["l20/*"])]
    assert dictionary.max_act[2] == 7.0
    assert dictionary.provenance["source"] == "pyvene/gemma-reft-r1-2b-it-res/l20"
    with pytest.raises(FileNotFoundError, match="l31: no such subfolder"):
        ConceptDictionary.load("pyvene/gemma-reft-r1-2b-it-res", subfolder="l31")


def test_hub_offline_gives_a_clear_error(monkeypatch):
    def offline(repo_id, allow_patterns=None):
        raise LocalEntryNotFoundError("Cannot reach the Hub and no cached snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=r"pyvene/gemma-reft-r1-2b-it-res: not a local path.*hf download"):
        ConceptDictionary.load("pyvene/gemma-reft-r1-2b-it-res", subfolder="l20")


# --- bad files ----------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors: no such file"):
        ConceptDictionary.load(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match="no concept dictionary here"):
        ConceptDictionary.load(tmp_path)
    folder = write_axbench_release(tmp_path / "release", random_rows(ROWS, 32))
    (folder / "metadata.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="metadata.jsonl: file not found"):
        ConceptDictionary.load(folder)


def test_several_layer_subfolders_need_a_choice(tmp_path):
    write_axbench_release(tmp_path, random_rows(ROWS, 32), layer=10)
    write_axbench_release(tmp_path, random_rows(ROWS, 32), layer=20)
    with pytest.raises(ValueError, match=r"several subfolders \(l10, l20\); choose one with subfolder="):
        ConceptDictionary.load(tmp_path)
    assert ConceptDictionary.load(tmp_path, subfolder="l10").provenance["layer"] == 10


def release_with(tmp_path, edit):
    """An AxBench release folder, changed by ``edit(folder)`` before loading."""
    folder = write_axbench_release(tmp_path, random_rows(ROWS, 32))
    edit(folder)
    return folder


def drop_last_metadata_line(folder):
    write_jsonl(folder / "metadata.jsonl", metadata_lines()[:-1])


def swap_concept_ids(folder):
    lines = metadata_lines()
    lines[2]["concept_id"], lines[3]["concept_id"] = 3, 2
    write_jsonl(folder / "metadata.jsonl", lines)


def break_metadata_json(folder):
    text = (folder / "metadata.jsonl").read_text()
    (folder / "metadata.jsonl").write_text(text.replace('"concept": ', '"concept" ', 1))


def write_acts(acts):
    return lambda folder: (folder / "acts.json").write_text(json.dumps(acts))


def write_wrong_bias(folder):
    torch.save(torch.zeros(ROWS + 2), folder / "bias.pt")


@pytest.mark.parametrize(
    "edit, culprit, message",
    [
        (drop_last_metadata_line, "metadata.jsonl", "describes 6 concepts but weight.pt has 7 rows"),
        (swap_concept_ids, "metadata.jsonl", "line 3 has concept_id 3 but describes row 2"),
        (break_metadata_json, "metadata.jsonl", "line 1 is not valid JSON"),
        (write_acts({"max_act": {"7": 2.0}}), "acts.json", "max_act names concept 7 but the dictionary has 7 rows"),
        (write_acts({"max_act": {"one": 2.0}}), "acts.json", "'one': 2.0 is not a concept id"),
        (lambda folder: (folder / "acts.json").write_text('{"max_act": '), "acts.json", "not valid JSON"),
        (write_wrong_bias, "bias.pt", "holds 9 biases but weight.pt has 7 rows"),
        (lambda folder: torch.save(torch.randn(32), folder / "weight.pt"), "weight.pt", "must be 2-D"),
        (lambda folder: truncate(folder / "weight.pt"), "weight.pt", "truncated or corrupted"),
        (lambda folder: (folder / "weight.pt").write_bytes(b"not a checkpoint" * 8), "weight.pt", "cannot be read"),
    ],
)
def test_bad_axbench_files(tmp_path, edit, culprit, message):
    folder = release_with(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        ConceptDictionary.load(folder)
    assert str(error.value).startswith(str(folder / culprit))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda path: truncate(path, keep=0.9), "truncated or corrupted"),
        (lambda path: path.write_bytes(b"\x00" * 64), "truncated or corrupted"),
        (lambda path: rewrite_header(path, format_version="2"), "newer steerkern .format version 2"),
        (lambda path: rewrite_header(path, concepts="[{]"), "unreadable concepts metadata"),
        (lambda path: rewrite_header(path, concepts=json.dumps([{"concept": "only one"}])), "describes 1 concepts"),
        (lambda path: rewrite_header(path, format="something else"), r"neither a steerkern dictionary .* nor an SAE"),
    ],
)
def test_bad_steerkern_files(tmp_path, edit, message):
    path = saved(tmp_path)
    edit(path)
    with pytest.raises(ValueError, match=message) as error:
        ConceptDictionary.load(path)
    assert str(error.value).startswith(str(path))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sae: sae.pop("threshold"), "is missing threshold"),
        (lambda sae: sae.update(W_enc=sae["W_enc"].T.contiguous()), r"W_enc has shape \(7, 32\), expected \(32, 7\)"),
        (lambda sae: sae.update(b_dec=torch.randn(31)), r"b_dec has shape \(31,\), expected \(32,\)"),
    ],
)
def test_bad_sae_files(tmp_path, edit, message):
    sae = random_sae(ROWS, 32)
    edit(sae)
    torch.save(sae, tmp_path / "GemmaScopeSAE.pt")
    with pytest.raises(ValueError, match=message) as error:
        ConceptDictionary.load(tmp_path / "GemmaScopeSAE.pt")
    assert str(error.value).startswith(str(tmp_path / "GemmaScopeSAE.pt"))


def test_truncated_params_npz(tmp_path):
    path = truncate(write_params_npz(tmp_path, random_sae(ROWS, 32)))
    with pytest.raises(ValueError, match=r"params.npz: is not a NumPy .npz archive; is it truncated"):
        ConceptDictionary.load(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "dictionary.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="dictionary.csv: has an unknown dictionary format"):
        ConceptDictionary.load(path)


def test_failed_load_leaves_other_dictionaries_alone(tmp_path):
    dictionary = reft_dictionary(width=32)
    path = saved(tmp_path, dictionary)
    weight, concepts = dictionary.weight.clone(), [dict(concept) for concept in dictionary.concepts]
    truncate(path)
    with pytest.raises(ValueError):
        ConceptDictionary.load(path)
    assert torch.equal(dictionary.weight, weight) and dictionary.concepts == concepts


# --- memory-mapped loading ------------------------------------------------------------------------


def resident_mib() -> float:
    # Anonymous memory only: the mapped file's pages, read once by the finiteness check, belong
    # to the page cache and are not a copy.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    pytest.skip("needs /proc/self/status to read resident memory")


def write_concept16k(path, rows=16384, width=2304):
    weight = random_rows(rows, width, seed=11)
    ConceptDictionary(weight).save(path)
    return weight[[0, 9999]].clone()


def test_concept16k_file_opens_mapped(tmp_path):
    path = tmp_path / "concept16k.safetensors"
    expected_rows = write_concept16k(path)
    file_mib = path.stat().st_size / 2**20
    before = resident_mib()
    start = time.perf_counter()
    dictionary = ConceptDictionary.load(path)
    elapsed = time.perf_counter() - start
    grown = resident_mib() - before
    assert elapsed < 0.5, f"opening a {file_mib:.0f} MiB dictionary took {elapsed:.2f} s"
    assert grown < file_mib / 4, f"resident memory grew {grown:.0f} MiB on opening a {file_mib:.0f} MiB file"
    assert (len(dictionary), dictionary.d) == (16384, 2304)
    torch.testing.assert_close(dictionary.weight[[0, 9999]], expected_rows, rtol=0, atol=0)
