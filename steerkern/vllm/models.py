"""Steered vLLM model classes: the stock class, with steering installed in its decoder layers.

Installed at construction, before vLLM compiles the model: each steered layer's forward ends with
``SteeringTables.steer`` (custom ops with fake kernels, so they run inside the compiled graph at
every step), and the outer forward, which vLLM runs eagerly, fills the token tables once per step
from the positions and the forward context's ``query_start_loc``.
"""

from __future__ import annotations

import functools
import time
import weakref

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.gemma2 import Gemma2ForCausalLM
from vllm.model_executor.models.gemma3 import Gemma3ForCausalLM
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.utils import PPMissingLayer

from ..models import resolve_layer_indices
from .config import SteeringConfig, load_dictionary
from .tables import SteeringTables
from .timing import PluginTimer

# The tables of each engine's model, for the logits processor of the same worker.
_TABLES: weakref.WeakValueDictionary[int, SteeringTables] = weakref.WeakValueDictionary()


def tables_for(vllm_config) -> SteeringTables:
    tables = _TABLES.get(id(vllm_config))
    if tables is None:
        raise RuntimeError(
            "steerkern: this engine's model is not a steered one; start it with skv.engine_args(...) "
            "(hf_overrides selecting a Steerkern* architecture)"
        )
    return tables


class _SteeredLayer:
    """Mixed into a decoder layer's class: its ``(hidden, residual)`` output, steered."""

    def forward(self, *args, **kwargs):
        hidden, residual = super().forward(*args, **kwargs)
        if self.steering_timer is None:
            return self.steering.steer(self.steering_group, self.steering_dictionary, self.steering_bias, hidden, residual)
        started = time.perf_counter()
        steered = self.steering.steer(self.steering_group, self.steering_dictionary, self.steering_bias, hidden, residual)
        self.steering_timer.measure(self.steering_name, started)
        return steered


@functools.lru_cache(maxsize=None)
def _steered_layer_class(layer_class: type) -> type:
    return type(f"Steered{layer_class.__name__}", (_SteeredLayer, layer_class), {})


def _install(model: torch.nn.Module, vllm_config, timer: PluginTimer | None) -> SteeringTables:
    if vllm_config.use_v2_model_runner:
        raise RuntimeError(
            "steerkern steers through vLLM's V1 model runner (its logits processors see each request's program); "
            "start vLLM with VLLM_USE_V2_MODEL_RUNNER=0"
        )
    config = SteeringConfig.from_env()
    if config is None:
        raise RuntimeError("steerkern: a steered architecture was selected without a configuration; use skv.engine_args")
    stack = model.model
    indices = resolve_layer_indices(list(config.dictionaries), len(stack.layers))
    width = vllm_config.model_config.get_hidden_size()
    device = vllm_config.device_config.device
    dtype = vllm_config.model_config.dtype
    scheduler = vllm_config.scheduler_config
    sources = config.sources
    tables = SteeringTables(len(sources), scheduler.max_num_seqs, scheduler.max_num_batched_tokens,
                            config.max_concepts, config.clamp, device)
    copies = {}
    for index, source in zip(indices, config.dictionaries.values()):
        layer = stack.layers[index]
        if isinstance(layer, PPMissingLayer):
            continue  # another pipeline stage's layer: its dictionary lives there
        if source not in copies:
            dictionary = load_dictionary(source)
            dictionary.check_hidden_size(width, where=f"model (layer {index})")
            copies[source] = dictionary.to(device=device, dtype=dtype)
        dictionary = copies[source]
        layer.__class__ = _steered_layer_class(type(layer))
        layer.steering = tables
        layer.steering_group = sources.index(source)
        layer.steering_name = f"layer {index}"
        layer.steering_timer = timer if vllm_config.model_config.enforce_eager else None
        layer.register_buffer("steering_dictionary", dictionary.weight.contiguous(), persistent=False)
        layer.register_buffer("steering_bias", dictionary.bias, persistent=False)
    _TABLES[id(vllm_config)] = tables
    return tables


def _query_start_loc():
    metadata = get_forward_context().attn_metadata
    if not metadata:
        return None  # a dummy run: nothing to steer
    if isinstance(metadata, list):
        raise NotImplementedError("steerkern does not steer micro-batched (DBO) steps")
    return next(iter(metadata.values())).query_start_loc


class _SteeredCausalLM:
    """Mixed into a vLLM causal LM class: steering installed, token tables filled each step."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.steering_timer = PluginTimer.from_env()
        self.steering = _install(self, vllm_config, self.steering_timer)

    def forward(self, input_ids, positions, *args, **kwargs):
        started = time.perf_counter()
        query_start_loc = _query_start_loc()
        self.steering.fill(positions, query_start_loc)
        if self.steering_timer is not None:
            requests = 0 if query_start_loc is None else query_start_loc.shape[0] - 1
            self.steering_timer.step(positions.shape[0], requests)
            self.steering_timer.measure("fill", started)
        return super().forward(input_ids, positions, *args, **kwargs)


class SteerkernGemma2ForCausalLM(_SteeredCausalLM, Gemma2ForCausalLM):
    pass


class SteerkernGemma3ForCausalLM(_SteeredCausalLM, Gemma3ForCausalLM):
    pass


class SteerkernLlamaForCausalLM(_SteeredCausalLM, LlamaForCausalLM):
    pass


class SteerkernMistralForCausalLM(_SteeredCausalLM, MistralForCausalLM):
    pass


class SteerkernQwen2ForCausalLM(_SteeredCausalLM, Qwen2ForCausalLM):
    pass
