"""An opt-in timer of the plugin's own work, for ``steerkern bench --vllm``.

``STEERKERN_VLLM_TIMING=FILE`` makes each worker time the once-per-step table fill and each
steered layer's steering (wall clock; the CPU runs them synchronously), and rewrite FILE with
the totals every few steps. Python timing inside a compiled graph would be frozen at trace time,
so the layers are timed in eager engines only (``enforce_eager=True``); the fill runs outside
the graph and is timed in both.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

TIMING_ENV = "STEERKERN_VLLM_TIMING"
WRITE_EVERY = 16  # steps


class PluginTimer:
    def __init__(self, path: str):
        self.path = path
        self.totals = defaultdict(lambda: {"steps": 0, "seconds": 0.0})
        self._steps = 0
        self._decode = False

    @classmethod
    def from_env(cls) -> PluginTimer | None:
        path = os.environ.get(TIMING_ENV)
        return cls(path) if path else None

    def step(self, tokens: int, requests: int) -> None:
        """A new forward: a decode step when every request brings one token."""
        self._decode = requests > 0 and tokens == requests
        self._steps += 1
        if self._steps % WRITE_EVERY == 0:
            with open(self.path, "w") as file:
                json.dump(self.totals, file)

    def measure(self, what: str, started: float) -> None:
        if self._decode:
            entry = self.totals[what]
            entry["steps"] += 1
            entry["seconds"] += time.perf_counter() - started
