"""The op's own time per steered layer and decode step inside a compiled engine, from torch.profiler.

The opt-in timer (``timing.py``) sees the layers only in eager engines: inside vLLM's compiled
graph Python timing is frozen at trace time. The profiler records each ``steerkern::steer_`` call
the graph makes instead. It sees the worker's calls when the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while the engine starts); decode calls are those with one row
per request. The profiler adds a few microseconds to each op it records.
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


def op_time_per_decode_call(run, rows: int) -> dict:
    """Mean seconds of the ``steerkern::steer_`` calls on ``rows`` rows while ``run()`` runs, and
    their count."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        run()
    calls = [event for event in profile.key_averages(group_by_input_shape=True)
             if event.key == "steerkern::steer_" and event.input_shapes and list(event.input_shapes[0][:1]) == [rows]]
    count = sum(event.count for event in calls)
    if count == 0:
        raise RuntimeError(f"the profiler recorded no steerkern::steer_ call on {rows} rows")
    return {"seconds": sum(event.cpu_time_total for event in calls) / count / 1e6, "calls": count}
