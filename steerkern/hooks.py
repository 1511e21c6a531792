"""Steering and detection inside the decoder layers of a Hugging Face causal LM.

``Steerer(model, dictionary, layers)`` keeps one copy of the dictionary per hooked layer's device
and dtype. ``steer(...)`` and ``detect(...)`` return hook sets that are active inside a ``with``
block (or between ``apply()`` and ``remove()``):

- a forward pre-hook on the decoder stack reads each forward pass's own inputs (2-D attention
  mask, position ids, cache length) and turns them into the rows to steer or read, with tensor
  ops only, so the decode loop never waits on the host;
- a forward hook on each chosen layer runs ``steerkern.steer_`` (in place) or ``steerkern.detect``
  on the layer's output.

Row facts: a row is a *real* token unless the 2-D attention mask marks it as padding; its *index*
is its rank among its sequence's real tokens (the position ``generate`` gives it); a forward pass
of one token per sequence on top of earlier tokens is a *generation* step, any other pass is
*prompt*. Steering hooks on a layer run in the order their hook sets were applied; detection hooks
run before them, so detection reads the layer's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .dictionary import ConceptDictionary
from .conditions import Gates
from .models import find_decoder_layers, hidden_size, module_device_and_dtype, resolve_layer_indices
from .programs import as_dictionary, fit_batch, flat_list, row_of, steering_program

POSITIONS = ("all", "prompt", "generation")
STEERING_MODES = ("add", "clamp")


# --- what each forward pass's rows are -----------------------------------------------------------


@dataclass
class Rows:
    """Facts about the rows of one forward pass, each (B, S) on the inputs' device.

    ``real``: not padding (None: all are real). ``index``: rank among the sequence's real tokens.
    ``generated``: produced by a generation step (None: none is, or ``index`` was not asked for).
    ``columns``: (S,) position of each row in the sequence (prompt columns as in ``input_ids``,
    then the generated tokens). ``fresh``: the pass starts new sequences (a device tensor when
    only a static cache knows).
    """

    batch: int
    real: torch.Tensor | None
    index: torch.Tensor | None
    generated: torch.Tensor | None
    columns: torch.Tensor | None
    fresh: bool | torch.Tensor | None = None  # nothing was cached before this pass (None: not asked)


def _argument(args, kwargs, name, position):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _cache_length(kwargs):
    """Tokens already in the cache: an int, or a device tensor for static caches (never synced)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return cache.get_seq_length()


def _is_padding_mask(mask, length: int) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[-1] >= length


def read_rows(args, kwargs, *, need_index=False, need_columns=False, need_fresh=False, outer_mask=None) -> Rows:
    """Row facts from the decoder stack's forward arguments (HF order: input_ids, attention_mask).

    ``outer_mask``: the attention mask the whole model was called with, used when the stack only
    gets prepared masks (multimodal wrappers such as Gemma-3's). ``index`` and ``generated`` are
    left None unless ``need_index``, ``columns`` unless ``need_columns``: each costs small tensor
    ops at every decoding step, and reading a static cache's length from Python would make a
    compiled decode step recompile at every token.
    """
    tokens = _argument(args, kwargs, "input_ids", 0)
    if tokens is None:
        tokens = kwargs["inputs_embeds"]
    batch, length = tokens.shape[:2]
    attention_mask = _argument(args, kwargs, "attention_mask", 1)
    if not _is_padding_mask(attention_mask, length):
        attention_mask = outer_mask
    real = index = columns = None
    if _is_padding_mask(attention_mask, length):
        # The 2-D mask covers the cached tokens and this pass's tokens, in that order.
        real = attention_mask[:, -length:].bool()
        if need_index:
            index = attention_mask.long().cumsum(-1)[:, -length:] - 1
        if need_columns:
            columns = torch.arange(length, device=tokens.device) + (attention_mask.shape[-1] - length)
    elif need_index or need_columns:
        # No 2-D mask (none given, or a compilable cache's prepared 4-D masks): no padding is
        # visible; generate's position ids count real tokens, else the model counts from the cache.
        position_ids = kwargs.get("position_ids")
        has_positions = position_ids is not None and position_ids.dim() <= 2
        if need_columns or not has_positions:
            columns = torch.arange(length, device=tokens.device) + _cache_length(kwargs)
        if need_index:
            index = (position_ids if has_positions else columns).expand(batch, length)
    generated = index > 0 if index is not None and length == 1 else None
    fresh = None
    if need_fresh:
        cached = attention_mask.shape[-1] - length if _is_padding_mask(attention_mask, length) else _cache_length(kwargs)
        fresh = cached == 0
    return Rows(batch=batch, real=real, index=index, generated=generated, columns=columns, fresh=fresh)


def _both(first, second):
    """Logical and of two row masks where None means every row."""
    if first is None:
        return second
    if second is None:
        return first
    return first & second


def _on_device(mask, device):
    return mask if mask is None or mask.device == device else mask.to(device, non_blocking=True)


# --- the steerer ----------------------------------------------------------------------------------


@dataclass
class _Layer:
    module: torch.nn.Module
    dictionary: ConceptDictionary  # the copy on the layer's device and dtype
    source: ConceptDictionary  # what the user passed, for building programs


class Steerer:
    """Steer and read a causal LM's residual stream with a concept dictionary at chosen layers.

    ``dictionary``: a ConceptDictionary or (N, d) tensor for every layer, or ``{layer: dictionary}``
    (then ``layers`` may be omitted). ``layers``: decoder layer indices, negative ones counting
    from the end. ``layers_attr``: dotted path to the model's decoder layer list, for models whose
    layers are not found automatically.
    """

    def __init__(self, model: torch.nn.Module, dictionary, layers=None, *, layers_attr: str | None = None):
        found = find_decoder_layers(model, layers_attr)
        count = len(found.layers)
        if isinstance(dictionary, dict):
            per_layer = {
                resolve_layer_indices(key, count)[0]: as_dictionary(value) for key, value in dictionary.items()
            }
            indices = resolve_layer_indices(list(per_layer) if layers is None else layers, count)
            missing = [index for index in indices if index not in per_layer]
            if missing:
                raise ValueError(f"the dictionary mapping has no entry for layers {missing}")
        else:
            if layers is None:
                raise ValueError("layers is needed unless dictionary is a {layer: dictionary} mapping")
            indices = resolve_layer_indices(layers, count)
            per_layer = dict.fromkeys(indices, as_dictionary(dictionary))
        self._width = hidden_size(model)
        # One copy per (dictionary, device, dtype), shared by the layers that match; each entry
        # keeps its source alive, so that no other dictionary can take its id.
        self._copies = {}
        self.model = model
        self._stack = found.stack
        self._modules = found.layers
        self._num_layers = count
        self._layers = {}
        for index in indices:
            source = per_layer[index]
            self._layers[index] = _Layer(
                module=found.layers[index], dictionary=self.dictionary_copy(source, index), source=source
            )

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    def dictionary(self, layer: int) -> ConceptDictionary:
        """The dictionary given for ``layer`` (as passed, not the device copy)."""
        return self._layers[self.resolve_layer(layer)].source

    def resolve_layer(self, layer: int) -> int:
        return resolve_layer_indices(layer, self._num_layers)[0]

    def default_dictionary(self, layer: int) -> ConceptDictionary:
        """The dictionary for ``layer``: its own, or the one every steered layer shares."""
        if layer in self._layers:
            return self._layers[layer].source
        sources = {id(entry.source): entry.source for entry in self._layers.values()}
        if len(sources) != 1:
            raise ValueError(f"layer {layer} has no dictionary of its own here and the steered layers use "
                             f"several: name one with dictionary=")
        return next(iter(sources.values()))

    def dictionary_copy(self, source: ConceptDictionary, layer: int) -> ConceptDictionary:
        """``source`` on decoder layer ``layer``'s device and dtype, made once and shared."""
        device, dtype = module_device_and_dtype(self._modules[layer])
        key = (id(source), device, dtype)
        if key not in self._copies:
            self._copies[key] = (source, self.placed(source, layer))
        return self._copies[key][1]

    def placed(self, source: ConceptDictionary, layer: int) -> ConceptDictionary:
        """A new copy of ``source`` on decoder layer ``layer``'s device and dtype."""
        if self._width is not None:
            source.check_hidden_size(self._width, where=f"model (layer {layer})")
        device, dtype = module_device_and_dtype(self._modules[layer])
        return source.to(device=device, dtype=dtype)

    def steer(
        self, concepts, factors=None, *, mode="add", positions="all", prefix_length=0, mask=None, when=None
    ) -> SteeringHooks:
        """Hooks that steer each sequence with its own concepts (see ``steering_program``).

        ``mode``: "add" (h + α·w) or "clamp" (set the concept's coordinate to α).
        ``positions``: "all" (every prompt row and generated token, as pyvene's generate does),
        "prompt" or "generation"; telling them apart needs the KV cache (generate's default),
        since without it every pass re-reads the whole text as a prompt. ``prefix_length``: the
        first real tokens of each sequence stay unsteered. ``mask``: bool (B, M) by column (the
        layout of ``input_ids``, then the generated tokens); columns from M on count as true.
        ``when``: a ``Condition`` (or ``any_of`` / ``all_of``, or a list per sequence with None for
        unconditioned ones): steer only the rows its gate lets through (see ``conditions``).
        The hooks' ``readout`` keeps what the op read while steering.
        """
        return SteeringHooks(self, concepts, factors, mode, positions, prefix_length, mask, when)

    def detect(self, concepts="all", *, top_k=10, prefix_length=0, per_token=False) -> DetectionHooks:
        """Hooks that read concept activations; entering the ``with`` block gives the ``Readout``.

        ``concepts``: "all" (the dense path over all N concepts) or a list of rows / concept texts.
        Sentence scores are the max over real tokens from ``prefix_length`` on, over every forward
        pass inside the block (prompt and generated tokens of one ``generate`` call).
        ``per_token`` keeps every row's scores too.
        """
        return DetectionHooks(self, concepts, top_k, prefix_length, per_token)


class _Hooks:
    """A set of hooks registered by ``apply`` (or entering ``with``), removed by ``remove``
    (or leaving ``with``, also on exceptions)."""

    _run_first = False  # prepend the layer hooks (detection reads the layer's own output)
    _needs_index = False  # what _select_rows reads of the Rows besides `real`
    _needs_columns = False
    _needs_fresh = False

    def __init__(self, steerer: Steerer):
        self._steerer = steerer
        self._handles = []
        self._outer_mask = None
        self._rows = None

    def apply(self):
        if self._handles:
            raise RuntimeError("these hooks are already applied; remove() them first")
        try:
            if self._steerer.model is not self._steerer._stack:
                self._handles.append(
                    self._steerer.model.register_forward_pre_hook(self._on_model_forward, with_kwargs=True)
                )
            self._handles.append(self._steerer._stack.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            for index, layer in self._steerer._layers.items():
                hook = _LayerHook(self._on_layer, index)
                self._handles.append(
                    layer.module.register_forward_hook(hook, with_kwargs=True, prepend=self._run_first)
                )
            self._apply_more()
        except Exception:
            self.remove()
            raise
        return self

    def _apply_more(self) -> None:
        """Hooks a subclass adds to the layer hooks."""

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self):
        return self.apply()

    def __exit__(self, *exc_info):
        self.remove()

    def _on_model_forward(self, module, args, kwargs):
        self._outer_mask = kwargs.get("attention_mask")

    def _on_forward(self, module, args, kwargs):
        rows = read_rows(args, kwargs, need_index=self._needs_index, need_columns=self._needs_columns,
                         need_fresh=self._needs_fresh, outer_mask=self._outer_mask)
        self._outer_mask = None  # one model call, one stack call: never reuse it
        self._rows = self._select_rows(rows)

    def _rows_for(self, hidden: torch.Tensor):
        """This pass's row mask on ``hidden``'s device: None (all rows), False (none) or (B, S)."""
        rows = self._rows
        if isinstance(rows, torch.Tensor):
            if tuple(rows.shape) != tuple(hidden.shape[:2]):
                raise RuntimeError(
                    f"rows {tuple(rows.shape)} of the last decoder forward do not match the layer output "
                    f"{tuple(hidden.shape)}; steerkern hooks need the layers to run inside the model's forward"
                )
            return _on_device(rows, hidden.device)
        return rows

    def _select_rows(self, rows: Rows):
        raise NotImplementedError

    def _on_layer(self, index: int, hidden: torch.Tensor) -> None:
        raise NotImplementedError


class _LayerHook:
    """Forward hook calling back into its hook set with the layer output tensor (5.x) or tuple (4.x)."""

    def __init__(self, callback, index: int):
        self._callback = callback
        self._index = index

    def __call__(self, module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self._callback(self._index, hidden)  # in place: the output object stays the same


@dataclass
class _Program:
    dictionary: ConceptDictionary
    ids: torch.Tensor
    coeffs: torch.Tensor


class SteeringHooks(_Hooks):
    """Steers inside the layers while applied. Built by ``Steerer.steer``; reusable."""

    def __init__(self, steerer, concepts, factors, mode, positions, prefix_length, mask, when=None):
        super().__init__(steerer)
        if mode not in STEERING_MODES:
            raise ValueError(f"mode must be one of {STEERING_MODES}, got {mode!r}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if isinstance(prefix_length, bool) or not isinstance(prefix_length, int) or prefix_length < 0:
            raise ValueError(f"prefix_length must be an int >= 0, got {prefix_length!r}")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2):
            raise ValueError("mask must be a bool tensor (B, M): one flag per sequence and column")
        self.mode = mode
        self.positions = positions
        self.prefix_length = prefix_length
        stack_device = module_device_and_dtype(steerer._stack)[0]
        self._mask = None if mask is None else mask.to(stack_device)
        programs = {}  # built once per (dictionary, device): ids validated here, never per step
        self._programs = {}
        for index, layer in steerer._layers.items():
            key = (id(layer.source), layer.dictionary.device)
            if key not in programs:
                ids, coeffs = steering_program(layer.source, concepts, factors)
                programs[key] = _Program(layer.dictionary, ids.to(key[1]), coeffs.to(key[1]))
            self._programs[index] = programs[key]
        self._gates = None if when is None else Gates(steerer, when)
        if self._gates is not None:
            programs, conditions = next(iter(self._programs.values())).ids.shape[0], self._gates.sequences
            if min(programs, conditions) > 1 and programs != conditions:
                raise ValueError(f"when= lists {conditions} sequences but concepts lists {programs}")
        # Gates read at the first steering layer itself join its steering program: one pass.
        first = min(steerer.layers)
        self._fused = None if self._gates is None else self._gates.fused(first, self._programs[first])
        self._fused_layer = first
        self._needs_index = positions != "all" or prefix_length > 0 or self._gates is not None
        self._needs_columns = mask is not None
        self._needs_fresh = True  # the readout (and the gates' state) start over with each text
        self._readout_layers = sorted({*steerer.layers, *([] if self._gates is None else self._gates.gate_layers())})
        self.readout = SteeringReadout(self._readout_layers, steerer._num_layers)
        self._pass_rows = None

    def apply(self):
        """Register the hooks, with a fresh ``readout`` and cleared gate state."""
        super().apply()
        self.readout = SteeringReadout(self._readout_layers, self._steerer._num_layers)
        if self._gates is not None:
            self._gates.reset()
        return self

    def _apply_more(self):
        # Gate concepts are read before any steering hook of their layer runs.
        for index in [] if self._gates is None or self._fused is not None else self._gates.gate_layers():
            module = self._steerer._modules[index]
            hook = _LayerHook(self._on_gate_layer, index)
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True, prepend=True))

    def _on_forward(self, module, args, kwargs):
        super()._on_forward(module, args, kwargs)
        fresh = self._pass_rows.fresh
        if fresh is True:
            self.readout._clear()
        if self._gates is not None:
            self._gates.start_pass(fresh)

    def _select_rows(self, rows: Rows):
        self._pass_rows = rows
        keep = rows.real
        if self.positions == "generation":
            if rows.generated is None:
                return False
            keep = _both(keep, rows.generated)
        elif self.positions == "prompt" and rows.generated is not None:
            keep = _both(keep, ~rows.generated)
        if self.prefix_length:
            keep = _both(keep, rows.index >= self.prefix_length)
        if self._mask is not None:
            keep = _both(keep, self._mask_rows(rows))
        return keep

    def _mask_rows(self, rows: Rows) -> torch.Tensor:
        mask = fit_batch(self._mask, rows.batch, "mask")
        mask = _on_device(mask, rows.columns.device)
        width = mask.shape[1]
        with_rest = torch.nn.functional.pad(mask, (0, 1), value=True)  # column `width` stands for all later ones
        return with_rest[:, rows.columns.clamp(max=width)]

    def _on_gate_layer(self, index, hidden):
        for acts in self._gates.read(index, hidden, self._pass_rows, self.prefix_length):
            self.readout[index]._add_gate(acts)

    def _on_layer(self, index, hidden):
        rows = self._rows_for(hidden)
        if self._fused is not None and index == self._fused_layer:
            return self._on_fused_layer(index, hidden, rows)
        if rows is not False and self._gates is not None:
            rows = _both(rows, self._gates.rows(hidden))
        program = self._programs[index]
        self.readout[index]._add(self._steer(index, hidden, program.ids, program.coeffs, rows), rows)

    def _steer(self, index, hidden, ids, coeffs, rows, gate=()):
        """One op call on the layer's output; where no row is steered in this pass it still reads
        the concepts (mode detect). ``gate``: the fused gate's bounds and all-of flags."""
        dictionary, batch = self._programs[index].dictionary, hidden.shape[0]
        return ops.steer_prepared_(
            hidden,
            dictionary.weight,
            fit_batch(ids, batch, "concepts"),
            fit_batch(coeffs, batch, "concepts"),
            "detect" if rows is False else self.mode,
            None if rows is False else rows,
            dictionary.bias,
            *(fit_batch(tensor, batch, "when") for tensor in gate),
        )

    def _on_fused_layer(self, index, hidden, rows):
        """Gate and steered concepts in one op call: the kernel writes a row only if its gate passes."""
        fused = self._fused
        acts = self._steer(index, hidden, fused.ids, fused.coeffs, rows, (fused.bounds, fused.gate_all))
        steering, gate_acts = acts[..., : fused.steering_slots], acts[..., fused.steering_slots :]
        self._gates.record_fused(gate_acts, self._pass_rows, self.prefix_length)
        steered = False if rows is False else _both(rows, self._gates.rows(hidden))
        self.readout[index]._add(steering, steered)
        self.readout[index]._add_gate(gate_acts)


class SteeringLayerReadout:
    """What the steering hooks read at one layer, every forward pass of one text in order:
    ``acts`` (B, S, K) of the steered concepts before steering, ``steered`` (B, S) the rows the op
    steered, ``gate_acts`` (B, S, G) of the gate concepts read here (None where none is)."""

    def __init__(self, layer: int):
        self.layer = layer
        self._acts, self._steered, self._gate_acts = [], [], []

    @property
    def acts(self) -> torch.Tensor | None:
        return torch.cat(self._acts, dim=1) if self._acts else None

    @property
    def steered(self) -> torch.Tensor | None:
        if not self._steered:
            return None
        return torch.cat([_row_flags(rows, shape, device) for rows, shape, device in self._steered], dim=1)

    @property
    def gate_acts(self) -> torch.Tensor | None:
        return torch.cat(self._gate_acts, dim=1) if self._gate_acts else None

    def _add(self, acts, rows):
        self._acts.append(acts)
        self._steered.append((rows, acts.shape[:2], acts.device))

    def _add_gate(self, acts):
        self._gate_acts.append(acts)

    def _clear(self):
        self._acts.clear(), self._steered.clear(), self._gate_acts.clear()


def _row_flags(rows, shape, device):
    """A row mask as a (B, S) bool tensor: None means every row, False none."""
    if isinstance(rows, torch.Tensor):
        return rows
    return torch.full(tuple(shape), rows is None, dtype=torch.bool, device=device)


class _ByLayer:
    """``readout[layer]`` (negative layers count from the end) and the layers read."""

    def __init__(self, layers: dict, num_layers: int):
        self._layers = layers
        self._num_layers = num_layers

    def __getitem__(self, layer: int):
        return self._layers[resolve_layer_indices(layer, self._num_layers)[0]]

    @property
    def layers(self) -> list[int]:
        return list(self._layers)


class SteeringReadout(_ByLayer):
    """``readout[layer]`` for each steered or gate layer (see ``SteeringLayerReadout``)."""

    def __init__(self, layers: list[int], num_layers: int):
        super().__init__({layer: SteeringLayerReadout(layer) for layer in layers}, num_layers)

    def _clear(self):
        for layer in self._layers.values():
            layer._clear()


# --- detection ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopConcepts:
    """The best-scoring concepts of each sequence, best first."""

    ids: torch.Tensor  # (B, k) dictionary rows
    scores: torch.Tensor  # (B, k)
    names: list[list[str]]


class LayerReadout:
    """Detection results of one layer; columns follow ``concept_ids``."""

    def __init__(self, layer: int, concept_ids: torch.Tensor, names: list[str], top_k: int, per_token: bool):
        self.layer = layer
        self.concept_ids = concept_ids
        self.names = names
        self._k = top_k
        self._keep_per_token = per_token
        self._scores = None
        self._per_token = []

    @property
    def scores(self) -> torch.Tensor:
        """(B, C): per sequence and concept, the max over its real tokens from prefix_length on."""
        if self._scores is None:
            raise RuntimeError("no forward pass has run through the detection hooks yet")
        return self._scores

    @property
    def per_token(self) -> torch.Tensor:
        """(B, S, C): every row's scores (0 for pads and prefix rows), all forward passes in order."""
        if not self._keep_per_token:
            raise RuntimeError("per-token scores were not kept; pass per_token=True to detect()")
        if not self._per_token:
            raise RuntimeError("no forward pass has run through the detection hooks yet")
        return torch.cat(self._per_token, dim=1)

    @property
    def top_k(self) -> TopConcepts:
        scores, columns = self.scores.topk(min(self._k, self.scores.shape[1]), dim=-1)
        ids = self.concept_ids.to(columns.device)[columns]
        names = [[self.names[column] for column in sequence] for sequence in columns.tolist()]
        return TopConcepts(ids=ids, scores=scores, names=names)

    def _add(self, scores: torch.Tensor, per_token: torch.Tensor | None) -> None:
        if self._scores is not None and self._scores.shape != scores.shape:
            raise RuntimeError(
                f"a batch of {scores.shape[0]} after one of {self._scores.shape[0]}: use one detect() block per batch"
            )
        self._scores = scores if self._scores is None else torch.maximum(self._scores, scores)
        if per_token is not None:
            self._per_token.append(per_token)


class Readout(_ByLayer):
    """Detection results by layer: ``readout[layer]``, or ``scores`` / ``per_token`` / ``top_k``
    directly when one layer is hooked."""

    def _only(self) -> LayerReadout:
        if len(self._layers) != 1:
            raise RuntimeError(f"several layers were read ({self.layers}); use readout[layer]")
        return next(iter(self._layers.values()))

    @property
    def scores(self) -> torch.Tensor:
        return self._only().scores

    @property
    def per_token(self) -> torch.Tensor:
        return self._only().per_token

    @property
    def top_k(self) -> TopConcepts:
        return self._only().top_k


class DetectionHooks(_Hooks):
    """Reads concept activations at the layers while applied. Built by ``Steerer.detect``."""

    _run_first = True

    def __init__(self, steerer, concepts, top_k, prefix_length, per_token):
        super().__init__(steerer)
        if isinstance(prefix_length, bool) or not isinstance(prefix_length, int) or prefix_length < 0:
            raise ValueError(f"prefix_length must be an int >= 0, got {prefix_length!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        self.prefix_length = prefix_length
        self._needs_index = prefix_length > 0
        self._per_token = per_token
        self._top_k = top_k
        self._detectors = {}
        self._columns = {}  # layer -> (dictionary rows, their names), the readout's columns
        for index, layer in steerer._layers.items():
            if isinstance(concepts, str) and concepts == "all":
                rows = list(range(len(layer.source)))
                self._detectors[index] = layer.dictionary
            else:
                rows = [row_of(layer.source, item) for item in flat_list(concepts)]
                self._detectors[index] = layer.dictionary.subset(rows)
            names = layer.source.names
            self._columns[index] = (torch.tensor(rows), [names[row] for row in rows])
        self.readout = None

    def apply(self):
        """Register the hooks, with a fresh ``readout`` for what they read from now on."""
        super().apply()
        readouts = {
            index: LayerReadout(index, rows, names, self._top_k, self._per_token)
            for index, (rows, names) in self._columns.items()
        }
        self.readout = Readout(readouts, self._steerer._num_layers)
        return self

    def __enter__(self) -> Readout:
        self.apply()
        return self.readout

    def _select_rows(self, rows: Rows):
        return _both(rows.real, rows.index >= self.prefix_length if self.prefix_length else None)

    def _on_layer(self, index, hidden):
        rows = self._rows_for(hidden)
        detector = self._detectors[index]
        kwargs = detector.detection_kwargs()
        if self._per_token:
            per_token = ops.detect(hidden, detector.weight, mask=rows, reduce="none", **kwargs)
            scores = per_token.amax(dim=1)
        else:
            per_token = None
            scores = ops.detect(hidden, detector.weight, mask=rows, reduce="max", **kwargs)
        self.readout[index]._add(scores, per_token)
