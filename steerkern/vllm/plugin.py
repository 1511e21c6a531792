"""The ``vllm.general_plugins`` entry point, run by vLLM in every process it starts.

Inert unless ``STEERKERN_VLLM`` configures steering (``skv.engine_args`` and ``steerkern serve``
set it); then it registers the steered model classes and salts steered requests' prefix-cache
hashes with their program. Safe to run any number of times.
"""

from __future__ import annotations

from .architectures import ARCHITECTURES, PREFIX
from .config import SteeringConfig
from .programs import parse

_done = False


def register() -> None:
    global _done
    if _done or SteeringConfig.from_env() is None:
        return
    from vllm import ModelRegistry

    for architecture in ARCHITECTURES:
        name = PREFIX + architecture
        ModelRegistry.register_model(name, f"steerkern.vllm.models:{name}")
    _salt_steered_requests()
    _done = True


def _salt_steered_requests() -> None:
    """A steered request's first block hash carries its program (``cache_salt``), so it never
    reuses KV computed under another program, nor unsteered; unsteered requests share as before."""
    from vllm.v1.request import Request

    build = Request.from_engine_core_request.__func__

    def from_engine_core_request(cls, request, block_hasher):
        program = parse(request.sampling_params.extra_args) if request.sampling_params is not None else None
        if program is not None:
            salt = program.cache_salt()
            request.cache_salt = salt if not request.cache_salt else f"{request.cache_salt}|{salt}"
        return build(cls, request, block_hasher)

    Request.from_engine_core_request = classmethod(from_engine_core_request)
