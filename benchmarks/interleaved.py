"""Timing shared by the benchmark scripts: medians over rounds that interleave the variants, so
drift and noisy neighbours hit them alike."""

from __future__ import annotations

import statistics
import time

import torch


def time_interleaved(calls, rounds, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}
