"""The op's own time per steered layer and decode step inside a compiled engine, from torch.profiler.

The opt-in timer (``timing.py``) sees the layers only in eager engines: inside vLLM's compiled
graph Python timing is frozen at trace time. The profiler records each ``steerkern::steer_`` call
the graph makes instead, and each once-per-step table fill. It sees the worker's calls when the
engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while the engine starts);
decode calls are those with one row per request. The profiler adds a few microseconds to each op
it records.
"""

from __future__ import annotations

import os

import torch

IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def in_process_engine(make_engine):
    """``make_engine()`` with its engine core in this process."""
    before = os.environ.get(IN_PROCESS_ENV)
    os.environ[IN_PROCESS_ENV] = "0"
    try:
        return make_engine()
    finally:
        if before is None:
            del os.environ[IN_PROCESS_ENV]
        else:
            os.environ[IN_PROCESS_ENV] = before


def _mean_seconds(events, op: str, argument: int, rows: int) -> tuple[float, int]:
    """Mean seconds and count of ``op``'s calls whose ``argument``-th input has ``rows`` rows."""
    calls = [event for event in events if event.key == op and len(event.input_shapes) > argument
             and list(event.input_shapes[argument][:1]) == [rows]]
    count = sum(event.count for event in calls)
    if count == 0:
        raise RuntimeError(f"the profiler recorded no {op} call on {rows} rows")
    return sum(event.cpu_time_total for event in calls) / count / 1e6, count


def op_time_per_decode_call(run, rows: int) -> dict:
    """Mean seconds of the ``steerkern::steer_`` calls on ``rows`` rows while ``run()`` runs, and
    their count; the same for the once-per-step ``steerkern::fill_token_tables_`` calls of steps
    of ``rows`` tokens (``fill_seconds``, ``fill_calls``)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        run()
    events = profile.key_averages(group_by_input_shape=True)
    seconds, calls = _mean_seconds(events, "steerkern::steer_", 0, rows)  # hidden (rows, d)
    fill_seconds, fill_calls = _mean_seconds(events, "steerkern::fill_token_tables_", 3, rows)  # positions (rows,)
    return {"seconds": seconds, "calls": calls, "fill_seconds": fill_seconds, "fill_calls": fill_calls}
