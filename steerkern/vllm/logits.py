"""The logits processor through which steering sees each request's program.

vLLM calls ``validate_params`` in the front end for every request (a bad program is refused
there, alone: a ValueError from ``LLM.generate``, HTTP 400 from the server) and ``update_state``
in each worker before each forward, with the requests that joined, left or moved within the
persistent batch: that is where the request tables are written. It never changes the logits.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .architectures import ARCHITECTURES, PREFIX
from .config import SteeringConfig, load_dictionary
from .models import tables_for
from .programs import Program, parse


def _config() -> SteeringConfig:
    config = SteeringConfig.from_env()
    if config is None:
        raise RuntimeError("steerkern: SteeringPrograms is set but steering is not configured; use skv.engine_args")
    return config


def resolve(program: Program, config: SteeringConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The program's (ids, coeffs) for each of the engine's dictionaries; ValueError if it does not fit."""
    if program.mode == "clamp" and not config.clamp:
        raise ValueError("steerkern: this engine serves add programs only (it was started with clamp=False)")
    return [program.slots(load_dictionary(source), config.max_concepts) for source in config.sources]


class SteeringPrograms(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params):
        program = parse(sampling_params.extra_args)
        if program is not None:
            resolve(program, _config())

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        architectures = vllm_config.model_config.architectures
        if not all(name.startswith(PREFIX) for name in architectures):
            raise ValueError(
                f"steerkern has no steered vLLM class for {', '.join(architectures)}; it steers {', '.join(ARCHITECTURES)}"
            )
        self._vllm_config = vllm_config
        self._config = _config()

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        tables = tables_for(self._vllm_config)
        for row in batch_update.removed:
            tables.clear_request(row)
        for row, params, prompt_ids, _ in batch_update.added:
            program = parse(params.extra_args)
            slots = None if program is None else resolve(program, self._config)
            tables.set_request(row, program, slots, len(prompt_ids or ()))
        for source, target, direction in batch_update.moved:
            tables.move_request(source, target, swap=direction == MoveDirectionality.SWAP)
        tables.publish()
