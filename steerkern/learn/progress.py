"""A progress bar for learning runs: steps done, the latest loss and examples per second."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, description: str, enabled: bool, done: int = 0):
        self.bar = tqdm(total=total, initial=done, desc=description, unit="step", file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True)
        self.started = time.perf_counter()
        self.examples = 0

    def update(self, examples: int, loss: float | None = None) -> None:
        self.examples += examples
        rate = self.examples / max(time.perf_counter() - self.started, 1e-9)
        postfix = {"examples/s": f"{rate:.1f}"}
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
