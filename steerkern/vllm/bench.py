"""``steerkern bench --vllm``: generation throughput and time to first token of steered vLLM
engines against an unsteered one, on the demo Gemma-2 (d = 2304, random weights) from its config.

Variants: unsteered (stock class), the plugin loaded with nothing steered, and 1 shared, 8 and 32
distinct programs of K concepts, steering 1 layer and 3 layers. Every engine is started once and
kept; each repeat runs every variant in turn (interleaved and rotated, as ``run_e2e``), ratios
are medians of the ratios within each repeat. Time to first token is the wall time of the same
batch with one new token. The plugin's own time per steered layer and decode step comes from
extra eager engines with the opt-in timer (``STEERKERN_VLLM_TIMING``), one serving add and clamp
programs, one add programs only (``clamp=False``), both with 32 distinct add programs; the op's
time per steered layer inside the compiled graph from compiled engines of the same two kinds, run
in this process under torch.profiler (``profile.py``).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .. import demo
from ..bench import format_table
from ..dictionary import ConceptDictionary
from . import engine_args
from .profile import in_process_engine, op_time_per_decode_call
from .programs import program
from .timing import TIMING_ENV

LAYERS = {"1 layer": [1], "3 layers": [0, 1, 2]}
PROGRAM_COUNTS = (1, 8, 32)
KV_CACHE_BYTES = 1 << 30


def _write_inputs(folder: Path, concepts: int, seed: int) -> tuple[str, str, int]:
    model = demo.build_model(num_layers=3, seed=seed)
    # vLLM's Gemma-2 always ties its output embedding to the input one (the timings do not care
    # what the tokens are): write the tied model.
    model.config.tie_word_embeddings = True
    weights = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("lm_head.")}
    model.save_pretrained(folder / "model", state_dict=weights)
    rows = torch.randn(concepts, model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    ConceptDictionary(rows / rows.norm(dim=1, keepdim=True)).save(folder / "dictionary.safetensors")
    return str(folder / "model"), str(folder / "dictionary.safetensors"), model.config.vocab_size


def _programs(count: int, requests: int, k: int, concepts: int, seed: int) -> list[dict]:
    """``count`` distinct programs of ``k`` concepts, dealt to the requests in turn."""
    generator = torch.Generator().manual_seed(seed)
    distinct = [program(torch.randperm(concepts, generator=generator)[:k].tolist(),
                        (torch.rand(k, generator=generator) * 3 + 1).tolist()) for _ in range(count)]
    return [distinct[index % count] for index in range(requests)]


def run_vllm_bench(*, requests=32, prompt_length=32, new_tokens=64, repeats=5, k=4, concepts=1024, seed=0,
                   progress=print) -> dict:
    from vllm import LLM, SamplingParams, TokensPrompt

    # Several engines live at once: each gets a KV cache of a fixed size (tens of MiB are used), not
    # vLLM's default share of the machine's memory, which the first engine alone would take.
    common = dict(dtype="float32", skip_tokenizer_init=True, max_model_len=prompt_length + new_tokens + 8,
                  max_num_seqs=requests, enable_prefix_caching=False, seed=seed, kv_cache_memory_bytes=KV_CACHE_BYTES)
    with tempfile.TemporaryDirectory() as folder:
        model_dir, dictionary_file, vocab = _write_inputs(Path(folder), concepts, seed)
        generator = torch.Generator().manual_seed(seed)
        prompts = [TokensPrompt(prompt_token_ids=[demo.BOS] + torch.randint(4, vocab, (prompt_length - 1,),
                                                                           generator=generator).tolist())
                   for _ in range(requests)]
        progress("starting the engines (compiled)")
        engines = {"unsteered": LLM(model=model_dir, **common)}
        for name, layers in LAYERS.items():
            engines[name] = LLM(model=model_dir, **common, **engine_args(dictionary_file, layers, max_concepts=k))
        variants = {"unsteered": ("unsteered", [None] * requests),
                    "plugin loaded, nothing steered": ("1 layer", [None] * requests)}
        for name in LAYERS:
            for count in PROGRAM_COUNTS:
                label = f"{name}, {'1 shared program' if count == 1 else f'{count} programs'}"
                variants[label] = (name, _programs(count, requests, k, concepts, seed + count))

        def run(variant, tokens):
            engine, programs = variants[variant]
            params = [SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, extra_args=p) for p in programs]
            started = time.perf_counter()
            engines[engine].generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - started

        names = list(variants)
        for name in names:
            run(name, 2)  # warm-up
        seconds = {name: [] for name in names}
        first_token = {name: [] for name in names}
        for repeat in range(repeats):
            progress(f"repeat {repeat + 1} of {repeats}")
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                first_token[name].append(run(name, 1))
                seconds[name].append(run(name, new_tokens))
        for engine in engines.values():
            engine.llm_engine.engine_core.shutdown()
        del engines
        plugin = {}
        for label, clamp in (("add and clamp", True), ("add only", False)):
            progress(f"timing the plugin in an eager engine serving {label}, 3 layers, 32 programs")
            plugin[label] = _time_plugin(model_dir, dictionary_file, prompts, common, k, concepts, new_tokens, seed, clamp)
        for label, clamp in (("add and clamp", True), ("add only", False)):
            progress(f"profiling the op in a compiled engine serving {label}, 3 layers, 32 programs")
            plugin[label]["compiled_op"] = _profile_op(model_dir, dictionary_file, prompts, common, k, concepts,
                                                       new_tokens, seed, clamp)

    def ratio(name, values):
        return statistics.median(base / own for base, own in zip(values["unsteered"], values[name]))

    decode_s = {name: statistics.median(s - f for s, f in zip(seconds[name], first_token[name])) / (new_tokens - 1)
                for name in names}
    return {
        "requests": requests, "prompt_length": prompt_length, "new_tokens": new_tokens, "repeats": repeats, "k": k,
        "tokens_per_s": {name: requests * new_tokens / statistics.median(values) for name, values in seconds.items()},
        "of_unsteered": {name: ratio(name, seconds) for name in names},
        "ttft_s": {name: statistics.median(values) for name, values in first_token.items()},
        "ttft_of_unsteered": {name: 1 / ratio(name, first_token) for name in names},
        "decode_step_s": decode_s,
        "plugin": plugin,
    }


def _time_plugin(model_dir, dictionary_file, prompts, common, k, concepts, new_tokens, seed, clamp) -> dict:
    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "timing.json")
        os.environ[TIMING_ENV] = path
        try:
            engine = LLM(model=model_dir, **common, enforce_eager=True,
                         **engine_args(dictionary_file, LAYERS["3 layers"], max_concepts=k, clamp=clamp))
        finally:
            del os.environ[TIMING_ENV]
        programs = _programs(32, len(prompts), k, concepts, seed + 32)

        def generate(tokens):
            params = [SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, extra_args=p) for p in programs]
            started = time.perf_counter()
            engine.generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - started

        generate(new_tokens)  # warm-up
        first = generate(1)
        step = (generate(new_tokens) - first) / (new_tokens - 1)
        engine.llm_engine.engine_core.shutdown()
        totals = json.loads(Path(path).read_text())
    per_step = {what: entry["seconds"] / entry["steps"] for what, entry in totals.items() if entry["steps"]}
    return {"per_decode_step_s": per_step, "eager_decode_step_s": step}


def _profile_op(model_dir, dictionary_file, prompts, common, k, concepts, new_tokens, seed, clamp) -> dict:
    from vllm import LLM, SamplingParams

    engine = in_process_engine(lambda: LLM(model=model_dir, **common, **engine_args(
        dictionary_file, LAYERS["3 layers"], max_concepts=k, clamp=clamp)))
    programs = _programs(32, len(prompts), k, concepts, seed + 32)
    params = [SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True, extra_args=p) for p in programs]
    engine.generate(prompts, params, use_tqdm=False)  # warm-up
    timing = op_time_per_decode_call(lambda: engine.generate(prompts, params, use_tqdm=False), len(prompts))
    engine.llm_engine.engine_core.shutdown()
    del engine
    gc.collect()  # the engine ran in this process: free its KV cache before the next one starts
    return timing


def vllm_table(result: dict) -> str:
    rows = [[name, f"{rate:.1f}", f"{100 * result['of_unsteered'][name]:.1f}%",
             f"{1e3 * result['ttft_s'][name]:.0f} ms", f"{100 * result['ttft_of_unsteered'][name]:.1f}%",
             f"{1e3 * result['decode_step_s'][name]:.1f} ms"]
            for name, rate in result["tokens_per_s"].items()]
    return format_table(["variant", "tokens/s", "of unsteered", "TTFT", "TTFT of unsteered", "decode step"], rows)


def plugin_table(result: dict) -> str:
    engines = result["plugin"]
    parts = next(iter(engines.values()))["per_decode_step_s"]
    rows = [[what, *(f"{1e3 * timing['per_decode_step_s'][what]:.3f} ms" for timing in engines.values())]
            for what in parts]
    rows.append(["eager decode step (whole model)",
                 *(f"{1e3 * timing['eager_decode_step_s']:.1f} ms" for timing in engines.values())])
    rows.append(["op per steered layer, compiled (profiler)",
                 *(f"{1e3 * timing['compiled_op']['seconds']:.3f} ms" for timing in engines.values())])
    rows.append(["table fill per step, compiled (profiler)",
                 *(f"{1e3 * timing['compiled_op']['fill_seconds']:.3f} ms" for timing in engines.values())])
    return format_table(["plugin's own time per decode step (mean)", *(f"serving {label}" for label in engines)], rows)


def report_vllm_bench(args) -> dict:
    """``steerkern bench --vllm``: run, print the tables, return every figure."""
    import sys

    from . import require_vllm

    require_vllm("steerkern bench --vllm")
    result = run_vllm_bench(repeats=args.repeats, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"\nvLLM serving, demo Gemma-2 d=2304 x 3 layers, {result['requests']} requests x {result['prompt_length']} "
          f"prompt tokens x {result['new_tokens']} new tokens, K={result['k']}, float32, medians of {result['repeats']} repeats")
    print(vllm_table(result))
    print()
    print(plugin_table(result))
    return result
