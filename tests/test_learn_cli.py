"""``steerkern learn``: the file it writes, its progress bar, resuming after an interruption, its
errors, and ``torchrun`` sharding over two CPU processes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from steerkern import ConceptDictionary, learn
from steerkern.cli import main
from tests import planted
from tests.tiny_models import tiny_gemma2

reft_module = importlib.import_module("steerkern.learn.reft_r1")


def _save_model(folder, model):
    model.save_pretrained(folder)
    planted.tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("planted-gemma2"), planted.planted_model())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("axbench-data")
    rows = planted.rows(seed=0)
    pd.DataFrame(rows).to_parquet(folder / "train_data.parquet")
    pd.DataFrame(planted.rows(positives=12, negatives=12, seed=1)).to_parquet(folder / "latent_eval_data.parquet")
    concepts = sorted({(r["concept_id"], r["output_concept"]) for r in rows if r["concept_id"] >= 0})
    (folder / "metadata.jsonl").write_text("".join(
        json.dumps({"concept_id": cid, "concept": text, "ref": None, "concept_genres_map": {text: ["text"]}}) + "\n"
        for cid, text in concepts))
    return folder


def _learn(model_dir, data, output, *extra):
    return ["learn", "--model", model_dir, "--data", str(data), "--layer", str(planted.LAYER), "-o", str(output), *extra]


def test_learn_writes_the_dictionary_the_api_learns(model_dir, data_dir, tmp_path, capsys):
    output = tmp_path / "dict.safetensors"
    status = main(_learn(model_dir, data_dir, output, "--method", "reft-r1", "--eval-data", str(data_dir / "latent_eval_data.parquet")))
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "examples/s" in err and "loss" in err and "ReFT-r1" in err
    assert "held-out ROC AUC over 3 concepts" in out
    written = ConceptDictionary.load(output)
    model, tokenizer = planted.planted_model(), planted.tokenizer()
    expected = learn.reft_r1(model, tokenizer, data_dir, layer=planted.LAYER)
    torch.testing.assert_close(written.weight, expected.weight)
    assert written.names == expected.names and written.provenance["model_name"] == model_dir
    assert not list(tmp_path.glob("*.ckpt"))  # a finished run leaves no checkpoint


def test_diffmean_from_the_command_line(model_dir, data_dir, tmp_path, capsys):
    output = tmp_path / "diffmean.safetensors"
    assert main(_learn(model_dir, data_dir / "metadata.jsonl", output, "--method", "diffmean")) == 0
    assert ConceptDictionary.load(output).provenance["method"] == "DiffMean"


def test_an_interrupted_run_resumes_and_learns_the_same_rows(model_dir, data_dir, tmp_path, capsys, monkeypatch):
    """Two chunks (2 concepts, then 1) of 24 steps; stopped in the second chunk after its step-20
    checkpoint, the run resumes from that checkpoint and ends with the rows of an unbroken run."""
    args = ["--method", "reft-r1", "--concepts-per-batch", "2"]
    unbroken = tmp_path / "unbroken.safetensors"
    assert main(_learn(model_dir, data_dir, unbroken, *args)) == 0

    step = reft_module.ChunkTrainer._step
    calls = []

    def interrupted_step(self, active):
        calls.append(1)
        if len(calls) == 24 + 22:
            raise KeyboardInterrupt
        step(self, active)

    output = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(reft_module.ChunkTrainer, "_step", interrupted_step)
    assert main(_learn(model_dir, data_dir, output, *args)) == 130
    checkpoint = tmp_path / "resumed.safetensors.ckpt"
    saved = torch.load(checkpoint, weights_only=False)["state"]
    assert sorted(saved["rows"]) == [0, 1] and saved["chunk"]["step"] == 20
    monkeypatch.setattr(reft_module.ChunkTrainer, "_step", step)
    calls.clear()
    assert main(_learn(model_dir, data_dir, output, *args)) == 0
    assert "resuming from" in capsys.readouterr().err
    torch.testing.assert_close(ConceptDictionary.load(output).weight, ConceptDictionary.load(unbroken).weight, rtol=0, atol=0)
    assert not checkpoint.exists()


def test_a_checkpoint_of_another_model_size_is_refused(data_dir, tmp_path, capsys):
    output = tmp_path / "dict.safetensors"
    small = _save_model(tmp_path / "small", tiny_gemma2(hidden_size=32, num_layers=2, vocab=len(planted.tokenizer())))
    torch.save({"run": {"width": 64}, "state": {}}, tmp_path / "dict.safetensors.ckpt")
    assert main(_learn(small, data_dir, output, "--method", "diffmean")) == 2
    assert "holds rows of d=64 but the model's hidden size is 32" in capsys.readouterr().err


@pytest.mark.parametrize(
    "what,message",
    [
        ("columns", "missing columns category"),
        ("layer", "layer 7 is out of range for a model with 2 decoder layers"),
        ("empty", "concept 5 ('nothing') has no positive examples"),
        ("output", "writes dictionaries as .safetensors files"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(what, message, model_dir, data_dir, tmp_path, capsys):
    data, layer, output = data_dir, str(planted.LAYER), str(tmp_path / "dict.safetensors")
    if what == "columns":
        data = tmp_path / "train_data.parquet"
        pd.read_parquet(data_dir / "train_data.parquet").drop(columns=["category"]).to_parquet(data)
    if what == "empty":
        data = tmp_path / "metadata.jsonl"
        (tmp_path / "train_data.parquet").write_bytes((data_dir / "train_data.parquet").read_bytes())
        data.write_text((data_dir / "metadata.jsonl").read_text() + json.dumps({"concept_id": 5, "concept": "nothing"}) + "\n")
    if what == "layer":
        layer = "7"
    if what == "output":
        output = str(tmp_path / "dict.pt")
    argv = ["learn", "--method", "diffmean", "--model", model_dir, "--data", str(data), "--layer", layer, "-o", output]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("steerkern learn: error: ") and message in err.strip().splitlines()[-1]


def test_torchrun_two_processes_write_the_one_process_dictionary(model_dir, data_dir, tmp_path):
    single = tmp_path / "single.safetensors"
    assert main(_learn(model_dir, data_dir, single, "--method", "reft-r1", "--concepts-per-batch", "1")) == 0
    for method in ("reft-r1", "diffmean"):
        sharded = tmp_path / f"sharded-{method}.safetensors"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "steerkern.cli", *_learn(model_dir, data_dir, sharded, "--method", method, "--concepts-per-batch", "1")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        expected = single if method == "reft-r1" else tmp_path / "single-diffmean.safetensors"
        if method == "diffmean":
            assert main(_learn(model_dir, data_dir, expected, "--method", "diffmean")) == 0
        written, wanted = ConceptDictionary.load(sharded), ConceptDictionary.load(expected)
        assert torch.equal(written.weight, wanted.weight), method
        assert torch.equal(written.max_act, wanted.max_act)


def test_bench_learn_reports_both_methods_against_axbench_loops(tmp_path, capsys):
    report = tmp_path / "learn.json"
    argv = ["bench", "--learn", "--quick", "--device", "cpu", "--learn-batches", "6,12", "--learn-steps", "1", "--learn-epochs", "2", "--learn-rounds", "2",
            "--diffmean-concepts", "4", "--diffmean-positives", "3", "--diffmean-sample", "2", "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "vs AxBench loop" in out and "per-concept loop (AxBench" in out
    learned = json.loads(report.read_text())["learn"]
    assert [r["batch"] for r in learned["reft_r1"]["steerkern"]] == [6, 12]
    assert learned["reft_r1"]["examples"] == 2 * 6 * 2 and learned["reft_r1"]["updates_per_concept"] == 2 and learned["diffmean"]["examples"] == 4 * 3 + 3 * 3
    assert all(r["examples_per_s"] > 0 for r in learned["reft_r1"]["steerkern"]) and learned["diffmean"]["speedup"] > 0
    assert main(["bench", "--learn", "--quick", "--device", "cpu", "--learn-batches", "7"]) == 2
