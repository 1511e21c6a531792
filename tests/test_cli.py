"""The ``steerkern`` command: every subcommand on tiny inputs, its JSON, and its exit statuses."""

import json
import subprocess
import sys

import pytest
import torch

from steerkern import bench, bench_e2e, demo, floors
from steerkern.cli import main
from steerkern.dictionary import ConceptDictionary
from tests.tiny_models import tiny_gemma2

CONCEPTS = ["the ocean and the sea", "cooking food", "source code", "music and songs", "legal contracts",
            "weather forecasts", "space travel", "gardening"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A Gemma-2 with d = 64 and the demo's character tokenizer, saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-gemma2")
    tokenizer = demo.build_tokenizer()
    tiny_gemma2(hidden_size=64, num_layers=3, vocab=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _write_dictionary(path, d, seed=0):
    rows = torch.randn(len(CONCEPTS), d, generator=torch.Generator().manual_seed(seed))
    ConceptDictionary(rows / rows.norm(dim=1, keepdim=True), max_act=torch.full((len(CONCEPTS),), 3.0), concepts=CONCEPTS).save(path)
    return str(path)


@pytest.fixture(scope="module")
def dictionary_file(tmp_path_factory):
    return _write_dictionary(tmp_path_factory.mktemp("dictionary") / "concepts.safetensors", 64)


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- info and help ----------------------------------------------------------------------------


def test_info_names_backend_versions_and_device(capsys):
    status, out, _ = run(["info", "--device", "cpu"], capsys)
    assert status == 0
    for field in ("backend", "CUDA archs", "torch", "transformers", "GPUs", "selected"):
        assert field in out


def test_info_json_holds_build_and_machine(capsys):
    status, out, _ = run(["info", "--json", "--device", "cpu", "--dtype", "bf16"], capsys)
    info = json.loads(out)
    assert status == 0
    assert info["build"]["backend"] in ("compiled", "reference")
    assert info["selected"] == {"device": "cpu", "dtype": "bfloat16"}
    assert {"torch", "transformers", "python"} <= set(info["versions"])
    assert isinstance(info["gpus"], list)


@pytest.mark.parametrize("command", ["info", "demo", "steer", "detect", "bench"])
def test_every_command_explains_its_options(command, capsys):
    status, out, _ = run([command, "--help"], capsys)
    assert status == 0
    assert "--device" in out and "--dtype" in out


# --- bad usage: exit 2, one line ----------------------------------------------------------------


def _bad_usages(model, dictionary, tmp_path):
    wrong_width = _write_dictionary(tmp_path / "wrong_width.safetensors", 32)
    base = ["--model", model, "--dictionary", dictionary, "--layer", "1", "--device", "cpu"]
    usages = [
        (["frobnicate"], "invalid choice"),
        (["bench", "--dtype", "float64"], "float64"),
        (["bench", "--mode", "scale"], "scale"),
        (["bench", "--tokens", "0"], "positive"),
        (["bench", "--passing", "1.5"], "fractions between 0 and 1"),
        (["bench", "--ops", "gated", "--pool", "60", "--d", "48"], "independent directions"),
        (["bench", "--device", "cpu", "--cuda-graph"], "--cuda-graph needs"),
        (["bench", "--device", "tpu"], "device"),
        (["bench", "--json", str(tmp_path / "no-folder" / "bench.json")], "folder does not exist"),
        (["steer", "--model", "demo", "--dictionary", str(tmp_path / "missing.safetensors"), "hi"], "missing.safetensors"),
        (["steer", *base, "--concept", "no such concept", "--factor", "1", "hi"], "unknown concept"),
        (["steer", *base, "--concept", "99", "--factor", "1", "hi"], "unknown concept"),
        (["steer", *base, "--concept", "ocean", "hi"], "--factor"),
        (["steer", *base, "--concept", "ocean", "--factor", "1", "--factor", "2", "--factor", "3", "hi"], "one --factor per"),
        (["steer", *base, "--programs", str(tmp_path / "none.jsonl")], "none.jsonl"),
        (["steer", *base], "no prompts"),
        (["detect", *base[:4], "--layer", "7", "hi"], "out of range"),
        (["detect", *base[:2], "--dictionary", wrong_width, "--layer", "1", "hi"], "d=32"),
        (["detect", "--model", str(tmp_path / "no-such-model"), "--dictionary", dictionary, "--layer", "1", "hi"], "cannot load model"),
        (["detect", "--model", model, "--dictionary", "demo", "--layer", "1", "hi"], "--model demo"),
        (["detect", *base, "--dtype", "fp32,bf16", "hi"], "one dtype"),
    ]
    if not torch.cuda.is_available():
        usages.append((["info", "--device", "cuda"], "CUDA is not available"))
    return usages


def test_bad_usage_exits_2_with_one_line(tiny_model_dir, dictionary_file, tmp_path, capsys):
    for argv, fragment in _bad_usages(tiny_model_dir, dictionary_file, tmp_path):
        status, out, err = run(argv, capsys)
        *before, message = err.strip().splitlines()  # before: at most the progress bars of a model load
        assert status == 2, argv
        assert message.startswith("steerkern") and ": error: " in message and fragment in message, (argv, err)
        assert not any("error" in line.lower() or "Traceback" in line for line in before), (argv, err)
        assert out == "", argv


def test_console_script_exit_statuses():
    """Through a real process: ``sys.exit(main())`` turns the statuses into exit codes."""
    command = [sys.executable, "-m", "steerkern.cli"]
    ok = subprocess.run([*command, "info", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    bad = subprocess.run([*command, "bench", "--k", "x"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "backend" in ok.stdout
    assert bad.returncode == 2
    assert [line for line in bad.stderr.splitlines() if "error" in line] == [bad.stderr.strip().splitlines()[-1]]


# --- steer and detect ---------------------------------------------------------------------------


def test_steer_writes_one_generation_per_prompt(tiny_model_dir, dictionary_file, tmp_path, capsys):
    output = tmp_path / "steered.jsonl"
    argv = ["steer", "--model", tiny_model_dir, "--dictionary", dictionary_file, "--layer", "1", "--device", "cpu",
            "--concept", "ocean", "--factor", "2", "--concept", "4", "--factor", "0.5", "--max-new-tokens", "3",
            "--output", str(output), "first prompt", "second prompt"]
    status, _, _ = run(argv, capsys)
    records = _jsonl(output)
    assert status == 0
    assert [record["prompt"] for record in records] == ["first prompt", "second prompt"]
    assert records[0]["program"] == [
        {"concept_id": 0, "concept": "the ocean and the sea", "factor": 2.0},
        {"concept_id": 4, "concept": "legal contracts", "factor": 0.5},
    ]
    assert all(isinstance(record["generation"], str) for record in records)


def test_steer_programs_file_gives_each_prompt_its_concepts(tiny_model_dir, dictionary_file, tmp_path, capsys):
    programs = tmp_path / "programs.jsonl"
    lines = [
        {"prompt": "abc", "concepts": [], "factors": []},
        {"prompt": "abc", "concepts": ["gardening"], "factors": [40.0]},
        {"prompt": "xyz", "concepts": [1, "space"], "factors": [1.0, 2.0]},
    ]
    programs.write_text("\n".join(map(json.dumps, lines)) + "\n")
    output = tmp_path / "out.jsonl"
    argv = ["steer", "--model", tiny_model_dir, "--dictionary", dictionary_file, "--layer", "1", "--device", "cpu",
            "--programs", str(programs), "--batch-size", "2", "--max-new-tokens", "4", "--mode", "clamp", "--output", str(output)]
    status, _, _ = run(argv, capsys)
    records = _jsonl(output)
    assert status == 0
    assert [[p["concept"] for p in record["program"]] for record in records] == [[], ["gardening"], ["cooking food", "space travel"]]
    assert records[0]["generation"] != records[1]["generation"]  # a strong clamp changes greedy decoding


def test_detect_lists_top_concepts_best_first(tiny_model_dir, dictionary_file, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("from a file\n\nanother one\n")
    output = tmp_path / "readout.jsonl"
    argv = ["detect", "--model", tiny_model_dir, "--dictionary", dictionary_file, "--layer", "2", "--device", "cpu",
            "--top-k", "3", "--file", str(prompts), "--output", str(output), "an argument"]
    status, _, _ = run(argv, capsys)
    records = _jsonl(output)
    assert status == 0
    assert [record["prompt"] for record in records] == ["an argument", "from a file", "another one"]
    for record in records:
        scores = [entry["score"] for entry in record["top"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(entry["concept"] == CONCEPTS[entry["concept_id"]] for entry in record["top"])


def test_detect_prints_a_readable_listing(tiny_model_dir, dictionary_file, capsys):
    argv = ["detect", "--model", tiny_model_dir, "--dictionary", dictionary_file, "--layer", "1", "--device", "cpu", "--top-k", "2", "hello"]
    status, out, _ = run(argv, capsys)
    assert status == 0
    assert out.splitlines()[0] == "'hello'" and len(out.splitlines()) == 3


def test_steer_with_the_embedded_model_and_dictionary(capsys):
    argv = ["steer", "--model", "demo", "--dictionary", "demo", "--device", "cpu", "--concept", "source code",
            "--factor", "4", "--max-new-tokens", "2", "WHAT A GAME"]
    status, out, _ = run(argv, capsys)
    assert status == 0
    assert out.startswith("[source code ×4] 'WHAT A GAME'")


# --- demo ---------------------------------------------------------------------------------------


def test_demo_reads_steers_and_times(capsys):
    status, out, _ = run(["demo", "--quick", "--device", "cpu"], capsys)
    assert status == 0
    for section in ("saved in steerkern's .safetensors format", "Detection at layer", "Steering at layer", "Speed of steer_", "done in"):
        assert section in out
    steering_rows = out.split("Steering at layer")[1].split("Speed of")[0].strip().splitlines()[3:]
    assert len(steering_rows) == 2 * len(demo.DEMO_PROMPTS)
    assert sum("unsteered" in row for row in steering_rows) == len(demo.DEMO_PROMPTS)


# --- bench --------------------------------------------------------------------------------------


TINY_BENCH = ["bench", "--device", "cpu", "--tokens", "64", "--d", "48", "--k", "2", "--concepts", "96", "--pool", "8",
              "--rounds", "3", "--budget", "0.01"]


def test_bench_json_holds_machine_and_every_figure(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = [*TINY_BENCH, "--dtype", "fp32,bf16", "--providers", "steerkern,reference,naive,roof,matmul", "--json", str(path)]
    status, out, _ = run(argv, capsys)
    report = json.loads(path.read_text())
    assert status == 0
    assert "op/roof" in out and "op/matmul" in out
    assert {"command", "date", "build", "versions", "machine", "gpus", "cases"} <= set(report)
    assert report["command"].startswith("steerkern bench --device cpu")
    assert set(report["machine"]["huge_pages"]) == {"transparent", "requested_by_torch"}
    steer_cases = [case for case in report["cases"] if case["case"]["op"] == "steer"]
    assert len(steer_cases) == 2 * 4  # the 5 target programs, add/token/K=4 and K=16 merged by --k 2, per dtype
    gated_cases = [case for case in report["cases"] if case["case"]["op"] == "gated"]
    assert len(gated_cases) == 2 * len(bench.GATED_PASSING)
    assert len(report["cases"]) == len(steer_cases) + len(gated_cases) + 2
    for case in steer_cases:
        assert set(case["providers"]) == {"steerkern", "reference", "naive", "roof"}
        assert all(entry["error"] is None and entry["median_s"] > 0 for entry in case["providers"].values())
        assert case["ratios"]["steerkern_over_roof"] > 0 and "steerkern_speedup_vs_naive" in case["ratios"]
        assert case["hidden_shape"] == [1, 64, 48]
        # The floors of the case, measured in the run: the binding one is the slowest.
        assert set(case["floors_s"]) == set(floors.FLOORS) and all(v > 0 for v in case["floors_s"].values())
        assert case["floors_s"]["memory"] == case["providers"]["roof"]["median_s"]
        assert case["floors_s"][case["binding_floor"]] == max(case["floors_s"].values())
        assert case["ratios"]["steerkern_over_floor"] == pytest.approx(
            case["providers"]["steerkern"]["median_s"] / max(case["floors_s"].values()))
        assert case["timed"] == "back to back"  # steer calls run as a model's layers do
    dense = [case for case in report["cases"] if case["case"]["op"] == "dense"]
    assert all(case["timed"] == "after eviction" for case in dense)  # a small dictionary stays cached


def test_bench_gated_cases_time_one_pass_against_the_same_slots_and_two_passes(tmp_path, capsys):
    path = tmp_path / "gated.json"
    argv = [*TINY_BENCH, "--dtype", "fp32", "--ops", "gated", "--gates", "2", "--passing", "0,0.25,1", "--json", str(path)]
    status, out, _ = run(argv, capsys)
    cases = json.loads(path.read_text())["cases"]
    assert status == 0 and "two-pass/op" in out
    assert [case["case"]["passing"] for case in cases] == [0, 0.25, 1]
    for case in cases:
        assert set(case["providers"]) == set(bench.GATED_PROVIDERS)
        assert all(entry["error"] is None and entry["median_s"] > 0 for entry in case["providers"].values())
        assert {"steerkern_over_roof", "steerkern_speedup_vs_same-slots", "steerkern_speedup_vs_steering-slots",
                "steerkern_speedup_vs_two-pass"} <= set(case["ratios"])
        assert case["passing"] == pytest.approx(case["case"]["passing"], abs=1 / 64)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("passing", [0.1, 0.5])
def test_gated_providers_agree_and_keep_the_share_of_passing_rows(dtype, passing):
    """The gated op and detect-then-steer steer the same rows the same way; and since every
    provider writes hidden between rounds, none of them may move the gates' activations beyond
    the rounding of the writes."""
    case = bench.Case("gated", 512, 96, dtype, k=3, gates=2, concepts=256, pool=16, passing=passing)
    workload = bench.prepare(case, torch.device("cpu"))
    inputs = workload.inputs[0]
    assert inputs["passing"] == pytest.approx(passing, abs=1 / 512)
    dictionary = workload.dictionary
    gate_acts = bench.steer_(inputs["hidden"].clone(), dictionary, inputs["gate_ids"], inputs["gate_coeffs"], mode="detect")
    one_pass, two_pass = inputs["hidden"].clone(), inputs["hidden"].clone()
    bench.steer_(one_pass, dictionary, inputs["ids"], inputs["coeffs"], gate_bounds=inputs["bounds"])
    workload.providers["two-pass"]({**inputs, "hidden": two_pass})
    assert torch.equal(one_pass, two_pass)
    steered = (one_pass != inputs["hidden"]).any(-1)
    assert torch.equal(steered, (gate_acts > inputs["above"]).any(-1))
    for _ in range(3):
        for provider in workload.providers.values():
            provider(inputs)
    after = bench.steer_(inputs["hidden"], dictionary, inputs["gate_ids"], inputs["gate_coeffs"], mode="detect")
    if dtype == "float32":
        assert (after - gate_acts).abs().max() < 1e-4
        assert torch.equal((after > inputs["above"]).any(-1), steered)
    else:  # each write rounds the row, which moves an activation by a few thousandths either way
        assert (after - gate_acts).abs().max() < 0.05
        assert (after > inputs["above"]).any(-1).float().mean().item() == pytest.approx(passing, abs=0.02)


def test_floors_scale_with_the_work_and_the_slowest_binds():
    cpu = torch.device("cpu")
    small = bench.Case("steer", 256, 64, "float32", k=2, mode="add")
    seconds = floors.steer_floors(small, 1e-3, cpu)
    doubled = floors.steer_floors(bench.Case("steer", 256, 64, "float32", k=4, mode="add"), 1e-3, cpu)
    assert doubled["compute"] == pytest.approx(2 * seconds["compute"])
    detect = floors.steer_floors(bench.Case("steer", 256, 64, "float32", k=2, mode="detect"), 1e-3, cpu)
    assert detect["compute"] == pytest.approx(seconds["compute"] / 2)  # dots only, no update
    assert floors.binding({"memory": 1.0, "compute": 3.0, "gather": float("nan")}) == ("compute", 3.0)


def test_the_huge_page_mode_is_read_from_the_kernel_and_the_environment(tmp_path, monkeypatch):
    modes = tmp_path / "enabled"
    modes.write_text("always [madvise] never\n")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert bench.huge_pages(str(modes)) == {"transparent": "madvise", "requested_by_torch": True}
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    assert bench.huge_pages(str(tmp_path / "missing")) == {"transparent": None, "requested_by_torch": False}


@pytest.mark.parametrize("isa", ["avx512bf16", "avx512"])
def test_the_compute_floor_takes_the_dots_at_the_rate_of_the_dtype_the_kernel_uses(monkeypatch, isa):
    cpu = torch.device("cpu")
    peaks = {torch.float32: 1e9, torch.bfloat16: 4e9}  # FLOP/s, chosen so every term shows
    monkeypatch.setattr(floors, "fma_peak_flops", lambda device, dtype: peaks[dtype])
    monkeypatch.setattr(floors, "build_info", lambda: {"cpu_isa": isa})
    dot_flops = 2 * 256 * 4 * 64
    for dtype in ("float32", "bfloat16", "float16"):
        native = isa == "avx512bf16" and dtype == "bfloat16"
        dots_s = dot_flops / (4e9 if native else 1e9)
        add = floors.steer_floors(bench.Case("steer", 256, 64, dtype, k=4, mode="add"), 1e-3, cpu)
        detect = floors.steer_floors(bench.Case("steer", 256, 64, dtype, k=4, mode="detect"), 1e-3, cpu)
        assert detect["compute"] == pytest.approx(dots_s)
        assert add["compute"] == pytest.approx(dots_s + dot_flops / 1e9)  # the update is float32
        assert floors.dots_dtype(bench.Case("steer", 256, 64, dtype), cpu) == (torch.bfloat16 if native else torch.float32)


def test_bench_fails_when_the_fused_op_fails_but_not_when_a_baseline_does(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    argv = [*TINY_BENCH, "--dtype", "fp32", "--ops", "steer", "--mode", "add", "--program", "token",
            "--providers", "steerkern,naive,roof"]
    monkeypatch.setattr(bench, "naive_steer_", broken)
    status, _, err = run(argv, capsys)
    assert status == 0 and "[naive]: RuntimeError: kernel exploded" in err
    monkeypatch.setattr(bench, "steer_", broken)
    status, _, err = run(argv, capsys)
    assert status == 1 and "the fused op failed" in err and "[steerkern]: RuntimeError: kernel exploded" in err


def test_bench_times_torch_compile_of_the_reference(capsys):
    argv = [*TINY_BENCH, "--dtype", "fp32", "--ops", "steer", "--mode", "clamp", "--program", "token", "--k", "2",
            "--providers", "steerkern,compile,roof"]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert "vs compile" in out and "could not time" not in err


def test_bench_e2e_compares_hooks_with_a_plain_forward_hook(tmp_path, capsys):
    path = tmp_path / "e2e.json"
    argv = ["bench", "--e2e", "--quick", "--device", "cpu", "--batch-size", "2", "--prompt-length", "4",
            "--max-new-tokens", "3", "--repeats", "1", "--json", str(path)]
    status, out, _ = run(argv, capsys)
    result = json.loads(path.read_text())["e2e"]
    assert status == 0
    assert set(result["tokens_per_s"]) == set(result["of_unsteered"]) == set(bench_e2e.E2E_VARIANTS)
    assert result["of_unsteered"]["unsteered"] == 1.0
    assert result["steered_tokens_agree"]  # same math in float32: the same greedy tokens
    assert "of unsteered" in out


def test_bench_axes_replace_the_preset_values():
    cpu = torch.device("cpu")
    targets = bench.build_cases("targets", cpu, ["float32"], tokens=[64, 128])
    assert {case.tokens for case in targets} == {64, 128}
    assert len([case for case in targets if case.op == "steer"]) == 2 * 5
    only_add = bench.build_cases("targets", cpu, ["float32"], ops=["steer"], mode=["add"])
    assert [(case.program, case.k) for case in only_add] == [("sequence", 4), ("token", 4), ("token", 16)]
    # An axis replaces values only in the cases that read it: no steer or dense case is timed twice.
    several = bench.build_cases("targets", cpu, ["float32"], k=[2, 4], passing=[0.1, 1.0], gates=[1, 2])
    assert len([case for case in several if case.op == "steer"]) == 4 * 2  # add/token K=4 and K=16 merge
    assert len([case for case in several if case.op == "gated"]) == 2 * 2 * 2
    assert len([case for case in several if case.op == "dense"]) == 1
    assert not [case for case in bench.build_cases("targets", cpu, ["float32"], mode=["clamp"]) if case.op == "gated"]
    sweep = bench.build_cases("sweep", cpu, ["bfloat16"], ops=["steer"])
    assert {case.tokens for case in sweep} == {1, 16, 256, 4096, 65536} and {case.k for case in sweep} == {1, 4, 16, 64}
