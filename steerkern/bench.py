"""Kernel benchmarks: the fused ops against the reference, torch.compile of it, a naive formula and
the bandwidth roof, measured as ratios in one run.

One ``Workload`` per shape holds the inputs (several copies on CUDA, so that successive calls miss
L2) and every provider as a callable over one input set; ``steerkern bench`` and the
pytest-benchmark suite in ``benchmarks/`` both time these callables.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import itertools
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import __version__, floors, reference
from ._backend import build_info
from .ops import detect, steer_

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = reference.MODES
PROGRAMS = ("sequence", "token")
STEER_PROVIDERS = ("steerkern", "reference", "compile", "naive", "roof")
DENSE_PROVIDERS = ("steerkern", "reference", "matmul")
GATED_PROVIDERS = ("steerkern", "same-slots", "steering-slots", "two-pass", "roof")


@dataclass(frozen=True)
class Case:
    """One shape to time. ``op`` "steer" times ``steer_``; "dense" times ``detect(reduce="max")``;
    "gated" times a per-token add program of K steering slots and ``gates`` gate slots, with the
    threshold set so that a ``passing`` share of the rows pass.

    hidden is (tokens // seq_len, seq_len, d); a "sequence" program gives each sequence K slots,
    a "token" program each row. Concept ids are drawn from ``pool`` rows of a ``concepts``-row
    dictionary (a batch of requests steering with a few concepts). ``graph`` replays the calls
    from a CUDA graph, which removes the Python launch cost (decode-sized shapes).
    """

    op: str
    tokens: int
    d: int
    dtype: str
    k: int = 4
    mode: str = "add"
    program: str = "token"
    seq_len: int = 256
    concepts: int = 16384
    pool: int = 32
    graph: bool = False
    gates: int = 1
    passing: float = 0.5

    @property
    def shape(self) -> tuple[int, int, int]:
        seq_len = min(self.seq_len, self.tokens)
        return (self.tokens // seq_len, seq_len, self.d)

    def label(self) -> str:
        batch, seq_len, d = self.shape
        if self.op == "dense":
            return f"dense {self.dtype} T={batch * seq_len} d={d} N={self.concepts}"
        if self.op == "gated":
            return f"gated add K={self.k}+{self.gates} {self.dtype} T={batch * seq_len} d={d} passing {self.passing:.0%}"
        layout = f" ({batch}x{seq_len})" if self.program == "sequence" else ""
        graph = " graph" if self.graph else ""
        return f"{self.mode} {self.program} K={self.k} {self.dtype} T={batch * seq_len}{layout} d={d}{graph}"


def _cpu_cases(dtypes) -> list[Case]:
    """The CPU performance targets: T = 8192, d = 2304, 32 pooled concepts of a 16384-row dictionary."""
    steer = [("add", "sequence", 4), ("add", "token", 4), ("add", "token", 16), ("clamp", "token", 4), ("detect", "token", 4)]
    cases = [Case("steer", 8192, 2304, dtype, k=k, mode=mode, program=program) for dtype in dtypes for mode, program, k in steer]
    cases += [Case("gated", 8192, 2304, dtype, passing=passing) for dtype in dtypes for passing in GATED_PASSING]
    return cases + [Case("dense", 512, 2304, dtype) for dtype in dtypes]


def _cuda_cases(dtypes) -> list[Case]:
    """The GPU performance targets: bandwidth at T = 65536, speed-ups at T = 4096, the graphed decode shape."""
    cases = []
    for dtype, d in itertools.product(dtypes, (2304, 3584)):
        cases += [Case("steer", 65536, d, dtype, k=k, mode=mode) for mode in MODES for k in (4, 16)]
        cases += [Case("steer", 65536, d, dtype, k=4, program="sequence")]
        cases += [Case("steer", 4096, d, dtype, k=4, mode=mode) for mode in MODES]
        cases += [Case("dense", 4096, d, dtype)]
    cases += [Case("gated", 65536, 2304, dtype, passing=passing) for dtype in dtypes for passing in GATED_PASSING]
    cases += [Case("steer", 256, 3584, dtype, k=4, program="sequence", seq_len=1, graph=True) for dtype in dtypes]
    return cases


def _sweep_cases(dtypes) -> list[Case]:
    """Every axis in turn (tokens 1 … 65536, d, K, mode, program) around T = 4096, d = 2304, K = 4,
    add, per-token programs: the sweep without the cost of the full product."""
    axes = {
        "tokens": (1, 16, 256, 4096, 65536),
        "d": (2304, 3584, 4096),
        "k": (1, 4, 16, 64),
        "mode": MODES,
        "program": PROGRAMS,
    }
    cases = []
    for dtype in dtypes:
        center = Case("steer", 4096, 2304, dtype)
        for axis, values in axes.items():
            cases += [dataclasses.replace(center, **{axis: value}) for value in values]
        cases.append(Case("dense", 4096, 2304, dtype))
    return cases


PRESETS = ("targets", "sweep")
OPS = ("steer", "gated", "dense")
# Shares of rows whose gate passes in the gated targets: a concept that fires now and then, and half the time.
GATED_PASSING = (0.1, 0.5)


def default_dtypes(device: torch.device) -> list[str]:
    return ["bfloat16"] if device.type == "cuda" else ["float32", "bfloat16"]


# The axes each kind of case reads; an axis given for others leaves them as they are.
_STEER_AXES = {"tokens", "d", "k", "mode", "program", "seq_len", "concepts", "pool", "graph"}
CASE_AXES = {
    "steer": _STEER_AXES,
    "gated": _STEER_AXES | {"gates", "passing"},
    "dense": {"tokens", "d", "seq_len", "concepts", "graph"},
}


def build_cases(preset: str, device: torch.device, dtypes=None, ops=OPS, **axes) -> list[Case]:
    """The preset's cases; each axis given in ``axes`` (a list) replaces that axis in every case
    that reads it. Gated cases are add with per-token programs: a mode or program axis without
    those drops them."""
    dtypes = list(dtypes or default_dtypes(device))
    if preset == "sweep":
        cases = _sweep_cases(dtypes)
    else:
        cases = _cuda_cases(dtypes) if device.type == "cuda" else _cpu_cases(dtypes)
    axes = {name: values for name, values in axes.items() if values}
    expanded = []
    for case in cases:
        if case.op not in ops:
            continue
        own = {name: values for name, values in axes.items() if name in CASE_AXES[case.op]}
        for combination in itertools.product(*own.values()):
            replaced = dataclasses.replace(case, **dict(zip(own, combination)))
            if replaced.op != "gated" or (replaced.mode, replaced.program) == ("add", "token"):
                expanded.append(replaced)
    return list(dict.fromkeys(expanded))  # drop the duplicates a replaced axis creates, keep order


# ---------------------------------------------------------------------------------------------
# Providers


def reference_steer_(hidden, dictionary, concept_ids, coeffs, mode):
    """The reference used as an in-place op, as the fallback backend runs it."""
    steered, acts = reference.steer(hidden, dictionary, concept_ids, coeffs, mode=mode)
    if mode != "detect":
        hidden.copy_(steered)
    return acts


def naive_steer_(hidden, dictionary, concept_ids, coeffs, mode):
    """What one writes by hand: gather the K rows of every token, einsum, add, in hidden's dtype.

    It computes only what the mode needs (no activations for ``add``), so it never does more work
    than the fused op.
    """
    rows_shape = hidden.shape[:-1] + concept_ids.shape[-1:]
    if hidden.dim() == 3 and concept_ids.dim() == 2:
        concept_ids = concept_ids[:, None, :].expand(rows_shape)
        coeffs = coeffs[:, None, :].expand(rows_shape)
    rows = dictionary[concept_ids]  # (..., K, d)
    acts = None
    if mode != "add":
        acts = torch.relu(torch.einsum("...d,...kd->...k", hidden, rows))
    if mode != "detect":
        coef = coeffs.to(hidden.dtype) if mode == "add" else coeffs.to(hidden.dtype) - acts
        hidden.add_(torch.einsum("...k,...kd->...d", coef, rows))
    return acts


@dataclass
class Workload:
    """Inputs and providers of one case; ``bytes_moved`` is the least traffic the op needs."""

    case: Case
    inputs: list[dict]
    providers: dict[str, Callable[[dict], object]]
    bytes_moved: int
    flops: int
    dictionary: torch.Tensor | None = None  # the one every provider uses (to check results against)


def _input_copies(set_bytes: int, device: torch.device) -> int:
    """How many input sets make successive calls miss the GPU's L2 (1 on the CPU)."""
    if device.type != "cuda":
        return 1
    props = torch.cuda.get_device_properties(device)
    l2 = getattr(props, "L2_cache_size", 64 << 20)
    wanted = math.ceil(2 * l2 / max(set_bytes, 1))
    affordable = max(1, torch.cuda.mem_get_info(device)[0] // 4 // max(set_bytes, 1))
    return max(1, min(wanted, affordable, 64))


def prepare(case: Case, device: torch.device, providers=None, seed: int = 0) -> Workload:
    """Random inputs for ``case`` on ``device`` and the requested providers (all by default)."""
    random = {"generator": torch.Generator(device=device).manual_seed(seed), "device": device}
    dtype = DTYPES[case.dtype]
    batch, seq_len, d = case.shape
    dictionary = torch.randn(case.concepts, d, **random)
    dictionary = (dictionary / dictionary.norm(dim=1, keepdim=True)).to(dtype)
    hidden_bytes = batch * seq_len * d * dtype.itemsize
    make = {"steer": _prepare_steer, "gated": _prepare_gated, "dense": _prepare_dense}[case.op]
    build_set, provider_table, bytes_moved, flops = make(case, dictionary, random)
    set_bytes = hidden_bytes * (1 if case.op == "dense" else 2)  # steer sets carry a roof buffer
    inputs = [build_set() for _ in range(_input_copies(set_bytes, device))]
    wanted = providers or list(provider_table)
    chosen = {name: provider_table[name] for name in wanted if name in provider_table}
    if "compile" in chosen:
        torch._dynamo.reset()  # each case compiles afresh, never against the recompile limit
    return Workload(case, inputs, chosen, bytes_moved, flops, dictionary)


def _prepare_steer(case: Case, dictionary, random):
    batch, seq_len, d = case.shape
    dtype = DTYPES[case.dtype]
    pool = torch.randperm(case.concepts, **random)[: case.pool]
    program_shape = (batch, case.k) if case.program == "sequence" else (batch, seq_len, case.k)

    def build_set():
        return {
            "hidden": torch.randn(batch, seq_len, d, **random).to(dtype),
            "ids": pool[torch.randint(len(pool), program_shape, **random)],
            "coeffs": torch.rand(program_shape, **random) * 4 + 0.5,
            # normal floats: garbage memory could hold denormals, which the CPU multiplies slowly
            "roof": torch.rand(batch * seq_len * d * dtype.itemsize // 4, **random),
        }

    mode = case.mode
    compiled_reference = torch.compile(reference_steer_, dynamic=False)  # compiles on first call

    def steerkern_(x):
        return steer_(x["hidden"], dictionary, x["ids"], x["coeffs"], mode=mode, check_ids=False)

    providers = {
        "steerkern": steerkern_,
        "reference": lambda x: reference_steer_(x["hidden"], dictionary, x["ids"], x["coeffs"], mode),
        "compile": lambda x: compiled_reference(x["hidden"], dictionary, x["ids"], x["coeffs"], mode),
        "naive": lambda x: naive_steer_(x["hidden"], dictionary, x["ids"], x["coeffs"], mode),
        "roof": lambda x: x["roof"].mul_(1.0),
    }
    rows, slots = batch * seq_len, math.prod(program_shape)
    hidden_bytes = rows * d * dtype.itemsize
    traffic = hidden_bytes * (1 if mode == "detect" else 2) + rows * case.k * 4 + slots * (8 + 4)
    return build_set, providers, traffic, 2 * rows * case.k * d * (1 if mode == "add" else 2)


def _prepare_gated(case: Case, dictionary, random):
    """Per-token programs of K steering slots and G gate slots, steered in one pass, against an
    unconditional pass over the same K + G slots, one over the K steering slots, and detect-then-
    steer in two passes (a detect call for the gates, the threshold as tensor ops, a masked steer).

    Every provider writes hidden, so the gates must not see those writes, or the share of rows that
    pass would drift from round to round: the gate rows are orthogonal to the steering pool, the
    same-slots pass gives them coefficient 0, and the coefficients are small, so that hundreds of
    writes do not grow the rows (a half-precision row's rounding grows with it, and moves the
    gates' activations). The op's work does not depend on the values. Each row's gate activations
    are drawn uniformly from [0, 1) and the threshold is their quantile."""
    batch, seq_len, d = case.shape
    dtype = DTYPES[case.dtype]
    drawn = torch.randperm(case.concepts, **random)[: case.pool + case.gates]
    pool, gate_ids = drawn[: case.pool], drawn[case.pool :]
    directions = torch.cat([dictionary[pool].float(), torch.randn(case.gates, d, **random)])
    gate_rows = torch.linalg.qr(directions.T).Q[:, case.pool :].T  # orthonormal, orthogonal to the pool
    dictionary[gate_ids] = gate_rows.to(dtype)
    program_shape = (batch, seq_len, case.k + case.gates)
    steering, gate_slots = slice(0, case.k), slice(case.k, None)

    def build_set():
        hidden = torch.randn(batch, seq_len, d, **random)
        wanted = torch.rand(batch, seq_len, case.gates, **random)
        hidden = (hidden + (wanted - hidden @ gate_rows.T) @ gate_rows).to(dtype)
        ids = torch.cat([pool[torch.randint(len(pool), (batch, seq_len, case.k), **random)],
                         gate_ids.expand(batch, seq_len, -1)], dim=-1)
        coeffs = torch.rand(program_shape, **random) * 4e-3 + 1e-3
        gate_acts = steer_(hidden, dictionary, ids[..., gate_slots], coeffs[..., gate_slots], mode="detect")
        strongest = gate_acts.amax(-1).flatten().float()
        above = -1.0 if case.passing >= 1 else torch.quantile(strongest, 1 - case.passing).item()
        bounds = torch.full((*program_shape, 2), math.nan, device=hidden.device)
        bounds[..., gate_slots, 0], bounds[..., gate_slots, 1] = above, math.inf
        return {
            "hidden": hidden, "ids": ids, "coeffs": coeffs, "bounds": bounds, "above": above,
            "same_slots_coeffs": torch.cat([coeffs[..., steering], torch.zeros_like(coeffs[..., gate_slots])], dim=-1),
            "steering_ids": ids[..., steering].contiguous(), "steering_coeffs": coeffs[..., steering].contiguous(),
            "gate_ids": ids[..., gate_slots].contiguous(), "gate_coeffs": coeffs[..., gate_slots].contiguous(),
            "passing": (strongest > above).float().mean().item(),
            "roof": torch.rand(batch * seq_len * d * dtype.itemsize // 4, **random),
        }

    def two_pass(x):
        gate_acts = steer_(x["hidden"], dictionary, x["gate_ids"], x["gate_coeffs"], mode="detect", check_ids=False)
        mask = (gate_acts > x["above"]).any(-1)
        return steer_(x["hidden"], dictionary, x["steering_ids"], x["steering_coeffs"], mask=mask, check_ids=False)

    providers = {
        "steerkern": lambda x: steer_(x["hidden"], dictionary, x["ids"], x["coeffs"], gate_bounds=x["bounds"],
                                      check_ids=False),
        "same-slots": lambda x: steer_(x["hidden"], dictionary, x["ids"], x["same_slots_coeffs"], check_ids=False),
        "steering-slots": lambda x: steer_(x["hidden"], dictionary, x["steering_ids"], x["steering_coeffs"],
                                           check_ids=False),
        "two-pass": two_pass,
        "roof": lambda x: x["roof"].mul_(1.0),
    }
    rows = batch * seq_len
    hidden_bytes = rows * d * dtype.itemsize
    traffic = hidden_bytes * (1 + case.passing) + rows * (case.k + case.gates) * (8 + 4 + 8 + 4)
    return build_set, providers, traffic, 2 * rows * d * (2 * case.k + case.gates)


def _prepare_dense(case: Case, dictionary, random):
    batch, seq_len, d = case.shape
    dtype = DTYPES[case.dtype]

    def build_set():
        return {"hidden": torch.randn(batch, seq_len, d, **random).to(dtype)}

    providers = {
        "steerkern": lambda x: detect(x["hidden"], dictionary, reduce="max"),
        "reference": lambda x: reference.detect(x["hidden"], dictionary, reduce="max"),
        "matmul": lambda x: x["hidden"].view(-1, d) @ dictionary.T,
    }
    rows = batch * seq_len
    traffic = (rows + case.concepts) * d * dtype.itemsize + batch * case.concepts * 4
    return build_set, providers, traffic, 2 * rows * case.concepts * d


# ---------------------------------------------------------------------------------------------
# Timing


class _CpuClock:
    def start(self):
        self.began = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self.began


def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache as Linux reports it (32 MiB when it cannot tell)."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as file:
            text = file.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * scale)
    return max(sizes, default=32 << 20)


class _CpuCacheEviction:
    """Writes a buffer twice the size of the last-level cache, so that a provider's timed call
    starts from caches that hold none of its inputs (what rotating inputs does on CUDA)."""

    def __init__(self, cache_bytes: int):
        self.buffer = torch.ones(2 * cache_bytes // 4)

    def __call__(self):
        self.buffer.add_(1.0)


class _CudaClock:
    def __init__(self):
        self.began = torch.cuda.Event(enable_timing=True)
        self.ended = torch.cuda.Event(enable_timing=True)

    def start(self):
        self.began.record()

    def stop(self) -> float:
        self.ended.record()
        self.ended.synchronize()
        return self.began.elapsed_time(self.ended) / 1e3


class _EagerRunner:
    """Calls the provider on the input sets in turn; one unit is one call."""

    def __init__(self, fn, inputs, warmup):
        self.fn, self.inputs, self.calls = fn, inputs, 1
        self.next = itertools.cycle(inputs)
        for _ in range(max(warmup, len(inputs))):
            fn(next(self.next))

    def unit(self):
        self.fn(next(self.next))


class _GraphRunner:
    """Replays a CUDA graph of one call per input set (at least 8 calls); one unit is one replay."""

    def __init__(self, fn, inputs, warmup):
        sets = list(itertools.islice(itertools.cycle(inputs), max(8, len(inputs))))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # capture needs every lazy initialisation done beforehand
            for x in sets[: max(warmup, 1)]:
                fn(x)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for x in sets:
                fn(x)
        self.calls = len(sets)
        self.graph.replay()

    def unit(self):
        self.graph.replay()


@dataclass
class Timing:
    """Seconds per call: the median and best over rounds, each round ``calls_per_round`` calls."""

    median_s: float = math.nan
    min_s: float = math.nan
    rounds: int = 0
    calls_per_round: int = 0
    error: str | None = None


def time_workload(workload: Workload, *, rounds: int, budget_s: float, warmup: int = 3, min_round_s: float = 1e-3):
    """Time every provider of ``workload``; rounds of all providers interleave, so that a noisy
    neighbour slows them alike and the ratios stay fair. A provider that fails gets ``error``."""
    device = workload.inputs[0]["hidden"].device
    on_cuda = device.type == "cuda"
    clock = _CudaClock() if on_cuda else _CpuClock()
    cold = evicts_caches(workload)
    evict = _CpuCacheEviction(_last_level_cache_bytes()) if cold else (lambda: None)
    runner_type = _GraphRunner if workload.case.graph else _EagerRunner
    timings, plans = {}, {}
    with torch.no_grad():
        for name, fn in workload.providers.items():
            try:
                runner = runner_type(fn, workload.inputs, warmup)
                clock.start()
                runner.unit()
                unit_s = max(clock.stop(), 1e-9)
            except Exception as error:  # one provider failing (OOM, no compiler) must not end the run
                timings[name] = Timing(error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                _release(device)
                continue
            units = 1 if cold else max(1, math.ceil(min_round_s / unit_s))
            planned = min(rounds, max(3, int(budget_s / (units * unit_s))))
            plans[name] = (runner, units, planned)
            timings[name] = Timing(rounds=planned, calls_per_round=units * runner.calls)
        samples = {name: [] for name in plans}
        for round_index in range(max((plan[2] for plan in plans.values()), default=0)):
            for name, (runner, units, planned) in plans.items():
                if round_index >= planned:
                    continue
                evict()
                clock.start()
                for _ in range(units):
                    runner.unit()
                samples[name].append(clock.stop() / (units * runner.calls))
    for name, values in samples.items():
        timings[name].median_s = statistics.median(values)
        timings[name].min_s = min(values)
    return timings


def evicts_caches(workload: Workload) -> bool:
    """Whether each timed CPU call starts from evicted caches. Steer cases are timed back to back
    at every size: in a model the layer before has just written hidden, into whatever cache holds
    it, and the op's own blocks keep the pool's rows hot. A dense case reads the whole dictionary,
    which a model's weights push out of cache between two layers: where it fits the last-level
    cache, each round is one call after an eviction."""
    if workload.inputs[0]["hidden"].device.type == "cuda" or workload.case.op != "dense":
        return False
    return workload.dictionary.nbytes <= _last_level_cache_bytes()


def _release(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Results


def summarize(workload: Workload, timings: dict[str, Timing]) -> dict:
    """Every figure of one case: per provider time, GB/s, TFLOP/s, and the ratios between them."""
    case = workload.case
    providers = {}
    for name, timing in timings.items():
        entry = {key: None if value != value else value for key, value in dataclasses.asdict(timing).items()}  # NaN is not JSON
        if timing.error is None:
            entry["gb_per_s"] = workload.bytes_moved / timing.median_s / 1e9
            entry["tflop_per_s"] = workload.flops / timing.median_s / 1e12
        providers[name] = entry
    fused = _median(timings, "steerkern")
    ratios = {f"steerkern_speedup_vs_{name}": _median(timings, name) / fused for name in timings if name not in ("steerkern", "roof", "matmul")}
    extra = {}  # the floors of a steer case, the share of rows passing a gated case's gates
    if case.op != "dense":
        ratios["steerkern_over_roof"] = fused / _median(timings, "roof")
    if case.op == "gated":
        extra = {"passing": workload.inputs[0]["passing"]}
    elif case.op == "steer":
        if not math.isnan(_median(timings, "roof")):
            device = workload.inputs[0]["hidden"].device
            seconds = floors.steer_floors(case, _median(timings, "roof"), device)
            binds, floor_s = floors.binding(seconds)
            dots_in = str(floors.dots_dtype(case, device)).removeprefix("torch.")
            extra = {"floors_s": seconds, "binding_floor": binds, "dots_in": dots_in}
            ratios["steerkern_over_floor"] = fused / floor_s
    else:
        ratios["steerkern_over_matmul"] = fused / _median(timings, "matmul")
    batch, seq_len, d = case.shape
    return {
        "case": dataclasses.asdict(case),
        "label": case.label(),
        "hidden_shape": [batch, seq_len, d],
        "input_copies": len(workload.inputs),
        "timed": "after eviction" if evicts_caches(workload) else "back to back",
        "bytes_moved": workload.bytes_moved,
        "flops": workload.flops,
        **extra,
        "providers": providers,
        "ratios": {name: value for name, value in ratios.items() if not math.isnan(value)},
    }


def _median(timings, name) -> float:
    timing = timings.get(name)
    return timing.median_s if timing is not None and timing.error is None else math.nan


def run_cases(cases, device, *, providers=None, rounds=15, budget_s=1.0, progress=None):
    """Prepare, time and summarize each case in turn (inputs freed before the next case)."""
    results = []
    for case in cases:
        if progress is not None:
            progress(case)
        try:
            workload = prepare(case, device, providers)
        except torch.OutOfMemoryError as error:
            results.append({"case": dataclasses.asdict(case), "label": case.label(), "error": f"OutOfMemoryError: {error}".splitlines()[0]})
            _release(device)
            continue
        results.append(summarize(workload, time_workload(workload, rounds=rounds, budget_s=budget_s)))
        del workload
        _release(device)
    return results


def format_time(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _ratio(value, digits=2, suffix="×") -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}{suffix}"


def format_table(headers, rows, align="right") -> str:
    """Plain-text table, cells right-aligned (figures) or left-aligned (text)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    pad = str.rjust if align == "right" else str.ljust
    lines = ["  ".join(pad(str(cell), width) for cell, width in zip(line, widths)).rstrip() for line in (headers, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_pairs(pairs) -> str:
    """``key  value`` lines with the keys padded to one width."""
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def _speedup_columns(results, names):
    """Speed-up columns for the baselines that were run in at least one of ``results``."""
    ran = {name for result in results for name in result.get("providers", {})}
    return [name for name in names if name in ran]


def steer_table(results) -> str:
    results = [result for result in results if result["case"]["op"] == "steer"]
    baselines = _speedup_columns(results, ("reference", "compile", "naive"))
    headers = ["mode", "program", "K", "dtype", "T", "d", "roof", "steerkern", "GB/s", "% roof", "op/roof",
               "compute", "gather", "binds", "op/floor"]
    headers += [f"vs {name}" for name in baselines]
    rows = []
    for result in results:
        case = result["case"]
        providers, ratios = result.get("providers", {}), result.get("ratios", {})
        fused = providers.get("steerkern", {})
        over_roof = ratios.get("steerkern_over_roof", math.nan)
        batch, seq_len, d = result.get("hidden_shape", (0, case["tokens"], case["d"]))
        rows.append([
            case["mode"], case["program"] + (" graph" if case["graph"] else ""), case["k"], case["dtype"],
            batch * seq_len, d,
            format_time(_get(providers.get("roof"), "median_s")),
            format_time(_get(fused, "median_s")),
            f"{fused['gb_per_s']:.1f}" if "gb_per_s" in fused else "n/a",
            _ratio(100 / over_roof, 0, "%"), _ratio(over_roof),
            format_time(_get(result.get("floors_s"), "compute")), format_time(_get(result.get("floors_s"), "gather")),
            result.get("binding_floor", "n/a"), _ratio(ratios.get("steerkern_over_floor", math.nan)),
            *(_ratio(ratios.get(f"steerkern_speedup_vs_{name}", math.nan), 1) for name in baselines),
        ])
    return format_table(headers, rows) if rows else ""


def gated_table(results) -> str:
    results = [result for result in results if result["case"]["op"] == "gated"]
    headers = ["K", "gates", "dtype", "T", "d", "passing", "roof", "steerkern", "op/roof", "same slots", "op/same",
               "steering slots", "op/steering", "two-pass", "two-pass/op"]
    rows = []
    for result in results:
        case = result["case"]
        providers, ratios = result.get("providers", {}), result.get("ratios", {})
        batch, seq_len, d = result.get("hidden_shape", (0, case["tokens"], case["d"]))
        times = {name: format_time(_get(providers.get(name), "median_s")) for name in GATED_PROVIDERS}
        over = {name: _ratio(1 / ratios.get(f"steerkern_speedup_vs_{name}", math.nan)) for name in ("same-slots", "steering-slots")}
        rows.append([
            case["k"], case["gates"], case["dtype"], batch * seq_len, d, _ratio(100 * result.get("passing", math.nan), 0, "%"),
            times["roof"], times["steerkern"], _ratio(ratios.get("steerkern_over_roof", math.nan)),
            times["same-slots"], over["same-slots"], times["steering-slots"], over["steering-slots"],
            times["two-pass"], _ratio(ratios.get("steerkern_speedup_vs_two-pass", math.nan)),
        ])
    return format_table(headers, rows) if rows else ""


def dense_table(results) -> str:
    results = [result for result in results if result["case"]["op"] == "dense"]
    headers = ["dtype", "T", "d", "N", "matmul", "steerkern", "op/matmul", "TFLOP/s", "reference", "vs reference"]
    rows = []
    for result in results:
        case = result["case"]
        providers, ratios = result.get("providers", {}), result.get("ratios", {})
        fused = providers.get("steerkern", {})
        batch, seq_len, d = result.get("hidden_shape", (0, case["tokens"], case["d"]))
        rows.append([
            case["dtype"], batch * seq_len, d, case["concepts"],
            format_time(_get(providers.get("matmul"), "median_s")),
            format_time(_get(fused, "median_s")),
            _ratio(ratios.get("steerkern_over_matmul", math.nan)),
            f"{fused['tflop_per_s']:.2f}" if "tflop_per_s" in fused else "n/a",
            format_time(_get(providers.get("reference"), "median_s")),
            _ratio(ratios.get("steerkern_speedup_vs_reference", math.nan), 1),
        ])
    return format_table(headers, rows) if rows else ""


def _get(entry, key) -> float:
    value = (entry or {}).get(key)
    return math.nan if value is None else value


def failures(results) -> list[str]:
    """One line per case or provider that could not be timed."""
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['label']}: {result['error']}")
        for name, entry in result.get("providers", {}).items():
            if entry.get("error"):
                lines.append(f"{result['label']} [{name}]: {entry['error']}")
    return lines


def fused_failures(results) -> list[str]:
    """The failures of the fused op itself (a case that could not be set up counts too): what
    makes a benchmark run fail, where a baseline that cannot run (no compiler, out of memory)
    only leaves a gap in the table."""
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['label']}: {result['error']}")
        error = result.get("providers", {}).get("steerkern", {}).get("error")
        if error:
            lines.append(f"{result['label']} [steerkern]: {error}")
    return lines


# ---------------------------------------------------------------------------------------------
# Machine description and end-to-end generation


def environment() -> dict:
    """Machine, GPUs, versions and build: what every set of figures is recorded with."""
    import numpy
    import transformers

    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "index": index,
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        })
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steerkern": __version__,
        "build": build_info(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
            "huge_pages": huge_pages(),
        },
        "gpus": gpus,
    }


def huge_pages(mode_file: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> dict:
    """The kernel's transparent huge page mode ("always", "madvise", "never"; None where it cannot
    be read) and whether torch asks for them (``THP_MEM_ALLOC_ENABLE=1``, needed in madvise
    mode). The page size moves the memory floor far more than the op (RESULTS.md, 2026-12-08)."""
    try:
        with open(mode_file) as modes:
            mode = next((word[1:-1] for word in modes.read().split() if word.startswith("[")), None)
    except OSError:
        mode = None
    return {"transparent": mode, "requested_by_torch": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"}


def cpu_busy_fraction(window_s: float = 0.5):
    """Share of the CPUs' time spent busy over a short window just now (None off Linux): other
    work competing for the cores makes the figures noisy."""

    def sample():
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total, idle = sample()
        time.sleep(window_s)
        total_after, idle_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_after - total
    return round(1 - (idle_after - idle) / elapsed, 3) if elapsed else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
