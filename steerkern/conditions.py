"""Conditional steering: steer a row only where a gate concept is present, decided on the device.

A ``Condition`` names a gate concept, the layer it is read at and a threshold (``above=``,
``below=`` or both); ``any_of`` / ``all_of`` combine several. Each forward pass, the gate
concepts are read at their layers with the fused op in detect mode (before any steering at that
layer), turned into flags with tensor ops only, and reach the steering layers as part of the op's
row mask: no ``.item()``, no Python branch on a value, so a compiled decode step does not change
with the gate.

Scopes (DESIGN.md §1): ``"token"`` steers each row whose own score passes; ``"prompt"`` decides
once per sequence from its prompt rows (``reduce`` = max, mean or the last row's score) and steers
every row of a sequence that passes, prompt and generated; ``"latched"`` steers a sequence from the
first row whose score passes on, the latch carried across decode steps in a device tensor and
cleared when a pass starts from an empty cache. Rows before ``prefix_length`` and padding never
fire a gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ops
from .programs import as_dictionary, fit_batch, row_of

SCOPES = ("token", "prompt", "latched")
REDUCES = ("max", "mean", "last")


@dataclass(frozen=True)
class Condition:
    """Passes where the gate concept's activation at ``layer`` is above ``above`` and below
    ``below`` (either may be None, not both). ``concept``: a dictionary row or a concept text of
    ``dictionary`` (default: the steerer's dictionary for that layer)."""

    concept: int | str
    above: float | None = None
    below: float | None = None
    layer: int | None = None
    scope: str = "token"
    reduce: str = "max"
    dictionary: object = None

    def __post_init__(self):
        if self.layer is None or isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ValueError(f"Condition needs the layer its concept is read at (an int), got {self.layer!r}")
        if self.above is None and self.below is None:
            raise ValueError("Condition needs above=, below= or both")
        for name in ("above", "below"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"Condition {name}= must be a finite number, got {value!r}")
        if self.above is not None and self.below is not None and self.above >= self.below:
            raise ValueError(f"Condition above={self.above} >= below={self.below}: nothing can pass")
        if self.scope not in SCOPES:
            raise ValueError(f"Condition scope must be one of {SCOPES}, got {self.scope!r}")
        if self.reduce not in REDUCES:
            raise ValueError(f"Condition reduce must be one of {REDUCES}, got {self.reduce!r}")


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AllOf:
    conditions: tuple[Condition, ...]


def any_of(*conditions: Condition) -> AnyOf:
    """Passes where at least one of the conditions does."""
    return AnyOf(_leaves_of("any_of", conditions))


def all_of(*conditions: Condition) -> AllOf:
    """Passes where every one of the conditions does."""
    return AllOf(_leaves_of("all_of", conditions))


def _leaves_of(name, conditions) -> tuple[Condition, ...]:
    if not conditions:
        raise ValueError(f"{name}() needs at least one Condition")
    for condition in conditions:
        if not isinstance(condition, Condition):
            raise TypeError(f"{name}() combines Conditions (one level), got {type(condition).__name__}")
    return tuple(conditions)


def _as_combination(when) -> tuple[bool, tuple[Condition, ...]] | None:
    """(all of them must pass, the conditions) for one sequence; None: unconditioned."""
    if when is None:
        return None
    if isinstance(when, Condition):
        return False, (when,)
    if isinstance(when, (AnyOf, AllOf)):
        return isinstance(when, AllOf), when.conditions
    raise TypeError(f"when= takes a Condition, any_of(...), all_of(...) or a list of them per sequence, got {when!r}")


_TOKEN, _PROMPT, _LATCHED = range(3)


class _GateLayer:
    """The gate concepts read at one layer from one dictionary: a detect-mode program (B, G) and
    per slot its bounds and scope, plus the prompt decisions and latches carried between passes."""

    def __init__(self, layer, dictionary, slots_per_sequence):
        self.layer = layer
        self.dictionary = dictionary  # the copy on the layer's device and dtype
        device = dictionary.device
        width = max(1, *map(len, slots_per_sequence))
        batch = len(slots_per_sequence)
        ids = torch.full((batch, width), -1, dtype=torch.long)
        above = torch.full((batch, width), -math.inf)
        below = torch.full((batch, width), math.inf)
        scope = torch.zeros((batch, width), dtype=torch.long)
        reduce = torch.zeros((batch, width), dtype=torch.long)
        for b, slots in enumerate(slots_per_sequence):
            for k, (row, condition) in enumerate(slots):
                ids[b, k] = row
                above[b, k] = -math.inf if condition.above is None else condition.above
                below[b, k] = math.inf if condition.below is None else condition.below
                scope[b, k] = SCOPES.index(condition.scope)
                reduce[b, k] = REDUCES.index(condition.reduce)
        used = {(c.scope, c.reduce) for slots in slots_per_sequence for _, c in slots}
        self.scopes = {scope for scope, _ in used}
        self.reduces = {reduce for scope, reduce in used if scope == "prompt"}
        self.ids, self.coeffs = ids.to(device), torch.zeros((batch, width), device=device)
        self.above, self.below = above.to(device), below.to(device)
        self.scope, self.reduce = scope.to(device), reduce.to(device)
        self.decision = None  # (B, G) prompt-scope decisions
        self.latch = None  # (B, G) latched-scope state

    def read(self, hidden, rows, prefix_length, fresh):
        """This pass's acts (B, S, G) of the gate concepts, read in detect mode, and their flags."""
        batch = hidden.shape[0]
        acts = ops.steer_prepared_(hidden, self.dictionary.weight, _fit(self.ids, batch), _fit(self.coeffs, batch),
                                   "detect", None, self.dictionary.bias)
        return acts, self.flags(acts, rows, prefix_length, fresh)

    def flags(self, acts, rows, prefix_length, fresh):
        """(B, S, G): the rows each gate slot lets through, from its acts in this pass."""
        batch = acts.shape[0]
        ids = _fit(self.ids, batch)
        above, below = _fit(self.above, batch)[:, None, :], _fit(self.below, batch)[:, None, :]
        counted = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
        if rows.real is not None:
            counted = counted & rows.real.to(acts.device)
        if prefix_length:
            counted = counted & (rows.index.to(acts.device) >= prefix_length)
        fires = (acts > above) & (acts < below) & counted[..., None] & (ids >= 0)[:, None, :]
        flags = fires
        scope = _fit(self.scope, batch)[:, None, :]
        if "prompt" in self.scopes:
            prompt_flags = self._prompt_flags(acts, counted, rows, above, below, fresh)
            flags = torch.where(scope == _PROMPT, prompt_flags, flags)
        if "latched" in self.scopes:
            state = self._state("latch", batch, acts.device, fresh)
            running = torch.cummax((fires | state[:, None, :]).to(torch.uint8), dim=1).values.bool()
            state.copy_(running[:, -1, :])
            flags = torch.where(scope == _LATCHED, running, flags)
        return flags

    def _prompt_flags(self, acts, counted, rows, above, below, fresh):
        prompt_rows = counted if rows.generated is None else counted & ~rows.generated.to(counted.device)
        kept = torch.where(prompt_rows[..., None], acts, torch.zeros_like(acts))
        scores = {}
        if "max" in self.reduces:
            scores["max"] = kept.amax(dim=1)
        if "mean" in self.reduces:
            scores["mean"] = kept.sum(dim=1) / prompt_rows.sum(dim=1, keepdim=True).clamp(min=1)
        if "last" in self.reduces:
            columns = torch.arange(acts.shape[1], device=acts.device)
            last = torch.where(prompt_rows, columns, -1).amax(dim=1).clamp(min=0)
            scores["last"] = acts.gather(1, last[:, None, None].expand(-1, 1, acts.shape[2]))[:, 0]
        reduce = _fit(self.reduce, acts.shape[0])
        score = next(iter(scores.values()))
        for name, value in scores.items():
            score = torch.where(reduce == REDUCES.index(name), value, score)
        decided = (score > above[:, 0]) & (score < below[:, 0])
        state = self._state("decision", acts.shape[0], acts.device, fresh)
        state.copy_(torch.where(prompt_rows.any(dim=1)[:, None], decided, state))
        return state[:, None, :].expand_as(acts)

    def _state(self, name, batch, device, fresh):
        """A (B, G) bool carried across passes, cleared when this pass starts from an empty cache."""
        state = getattr(self, name)
        if state is None or state.shape[0] != batch or fresh is True:
            state = torch.zeros((batch, self.ids.shape[1]), dtype=torch.bool, device=device)
            setattr(self, name, state)
        elif isinstance(fresh, torch.Tensor):
            state &= ~fresh.to(device)
        return state

    def reset(self):
        self.decision = self.latch = None


def _fit(per_sequence, batch):
    return fit_batch(per_sequence, batch, "when")


class Gates:
    """The gates of one ``steer(..., when=...)``: the layers they are read at and how each
    sequence combines its conditions into the row gate at the steering layers."""

    def __init__(self, steerer, when):
        per_sequence = list(when) if isinstance(when, (list, tuple)) else [when]
        if not per_sequence:
            raise ValueError("when= lists no sequences")
        combinations = [_as_combination(item) for item in per_sequence]
        if all(item is None for item in combinations):
            raise ValueError("when= holds no Condition")
        first_steered = min(steerer.layers)
        slots = {}  # (layer, dictionary) -> per sequence [(row, condition)]
        copies = {}
        for b, combination in enumerate(combinations):
            for condition in combination[1] if combination else ():
                layer, source = self._gate_source(steerer, condition, first_steered)
                row = _gate_row(source, condition.concept)
                key = (layer, id(source))
                if key not in slots:
                    slots[key] = [[] for _ in per_sequence]
                    copies[key] = steerer.dictionary_copy(source, layer)
                slots[key][b].append((row, condition))
        self.layers = [_GateLayer(key[0], copies[key], slots[key]) for key in sorted(slots)]
        # Columns of the concatenated gate flags that belong to each sequence, and how they combine.
        device = steerer._layers[first_steered].dictionary.device
        self._valid = torch.cat([(gate.ids >= 0) for gate in self.layers], dim=1).to(device)
        self._all = torch.tensor([bool(c and c[0]) for c in combinations], device=device)
        self._conditioned = torch.tensor([c is not None for c in combinations], device=device)
        self._flags = {}
        self._fresh = False

    @staticmethod
    def _gate_source(steerer, condition, first_steered):
        layer = steerer.resolve_layer(condition.layer)
        if layer > first_steered:
            raise ValueError(
                f"the gate concept {condition.concept!r} is read at layer {layer}, after the steering layer "
                f"{first_steered}: a gate must be read at or before every layer it steers"
            )
        if condition.dictionary is not None:
            return layer, as_dictionary(condition.dictionary)
        return layer, steerer.default_dictionary(layer)

    def gate_layers(self) -> list[int]:
        return sorted({gate.layer for gate in self.layers})

    def start_pass(self, fresh):
        self._flags = {}
        self._fresh = fresh

    def read(self, layer, hidden, rows, prefix_length) -> list[torch.Tensor]:
        """Read this layer's gate concepts; returns their acts, one (B, S, G) per gate group."""
        read = []
        for position, gate in enumerate(self.layers):
            if gate.layer == layer:
                acts, self._flags[position] = gate.read(hidden, rows, prefix_length, self._fresh)
                read.append(acts)
        return read

    def fused(self, layer, steering):
        """When every condition is token-scoped at ``layer`` on the steering dictionary, the gate
        slots that join the steering program there (one pass reads the row for both): else None."""
        if len(self.layers) != 1 or self.layers[0].layer != layer or self.layers[0].scopes != {"token"}:
            return None
        gate = self.layers[0]
        if gate.dictionary is not steering.dictionary:
            return None
        return FusedGate(gate, steering, self._all)

    def record_fused(self, gate_acts, rows, prefix_length):
        """The flags of the fused gate slots' acts, for the steering layers after the fused one."""
        self._flags[0] = self.layers[0].flags(gate_acts, rows, prefix_length, self._fresh)

    def rows(self, hidden) -> torch.Tensor:
        """(B, S) bool: the rows the gates let through in this pass."""
        if len(self._flags) != len(self.layers):
            raise RuntimeError("the gate layers did not run before the steering layer in this forward pass")
        batch, device = hidden.shape[0], hidden.device
        flags = torch.cat([self._flags[position] for position in range(len(self.layers))], dim=2)
        valid = _fit(self._valid, batch).to(device)[:, None, :]
        every = _fit(self._all, batch).to(device)[:, None]
        conditioned = _fit(self._conditioned, batch).to(device)[:, None]
        gate = torch.where(every, (flags | ~valid).all(dim=2), (flags & valid).any(dim=2))
        return gate | ~conditioned

    def reset(self):
        for gate in self.layers:
            gate.reset()


def _gate_row(dictionary, concept) -> int:
    try:
        return row_of(dictionary, concept)
    except KeyError as error:
        raise ValueError(f"unknown gate concept {concept!r}: {error.args[0]}") from None


class FusedGate:
    """A steering program (B, K) with its layer's gate slots (B, G) appended, their bounds (NaN
    for steering and empty gate slots) and each program's all-of flag, for one gated op call."""

    def __init__(self, gate: _GateLayer, steering, gate_all):
        self.steering_slots = steering.ids.shape[1]
        batch = max(steering.ids.shape[0], gate.ids.shape[0])
        steering_ids, steering_coeffs = _fit(steering.ids, batch), _fit(steering.coeffs, batch)
        gate_ids = _fit(gate.ids, batch)
        self.ids = torch.cat([steering_ids, gate_ids], dim=1)
        self.coeffs = torch.cat([steering_coeffs, torch.zeros_like(gate_ids, dtype=torch.float32)], dim=1)
        nan = torch.full(steering_ids.shape + (2,), math.nan, device=gate_ids.device)
        bounds = torch.stack([_fit(gate.above, batch), _fit(gate.below, batch)], dim=-1)
        bounds = torch.where((gate_ids >= 0)[..., None], bounds, torch.full_like(bounds, math.nan))
        self.bounds = torch.cat([nan, bounds], dim=1)
        self.gate_all = _fit(gate_all, batch)
