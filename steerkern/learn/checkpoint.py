"""Training state on disk, so an interrupted run resumes where its last checkpoint left it.

A checkpoint records what the run is (method, model and its hidden size, layer, data,
hyperparameters); resuming with a different run is refused rather than mixing two. Writes go to a temporary file first and replace
the checkpoint in one rename, so an interruption while saving leaves the previous one intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class Checkpoint:
    def __init__(self, path, run: dict):
        self.path = Path(path)
        self.run = run

    def load(self) -> dict | None:
        """The saved state of this run, or None when there is none yet."""
        if not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=False)
        width = saved.get("run", {}).get("width")
        if width != self.run["width"]:
            raise ValueError(
                f"{self.path} holds rows of d={width} but the model's hidden size is {self.run['width']}; "
                "it was made with a different model"
            )
        if saved.get("run") != self.run:
            changed = sorted(k for k in set(saved.get("run", {})) | set(self.run) if saved.get("run", {}).get(k) != self.run.get(k))
            raise ValueError(
                f"{self.path} is a checkpoint of a different run (it differs in {', '.join(changed)}); "
                "remove it to start afresh"
            )
        return saved["state"]

    def save(self, state: dict) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        torch.save({"run": self.run, "state": state}, partial)
        os.replace(partial, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

