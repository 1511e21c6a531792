"""Program tables read by the steered layers inside vLLM's compiled model.

As vLLM's multi-LoRA index tables: allocated once at their largest size, filled in place, read by
ops inside the captured graph, so that no step allocates them and no host logic runs between the
layers (each op call still returns its (T, K) float32 activations, its one allocation). Two levels:

- per request (rows of vLLM's persistent batch): slot ids and coefficients for each dictionary,
  the positions kind, prefix length, prompt length and mode. Written on the host when requests
  join, leave or move (``SteeringPrograms.update_state``), copied to the device then.
- per token (rows of the step's flattened batch): ids and coefficients gathered from the request
  tables once per step for all steered layers (``fill``, before the forward, one
  ``fill_token_tables_`` kernel), with empty slots (-1) on the rows a program leaves alone, so
  unsteered rows cost the kernel nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..reference import POSITION_KINDS, UNSTEERED
from .programs import Program


class SteeringTables(nn.Module):
    """``groups`` dictionaries (one table each), up to ``max_requests`` requests in the persistent
    batch and ``max_tokens`` tokens per step, ``slots`` concepts per program. ``clamp``: serve clamp
    programs, which read the residual stream (see ``steer``)."""

    def __init__(self, groups: int, max_requests: int, max_tokens: int, slots: int, clamp: bool, device):
        super().__init__()
        self.clamp = clamp
        request_tables = {
            "request_ids": torch.full((groups, max_requests, slots), -1, dtype=torch.long),
            "request_coeffs": torch.zeros((groups, max_requests, slots), dtype=torch.float32),
            "request_kind": torch.zeros(max_requests, dtype=torch.int32),
            "request_prefix": torch.zeros(max_requests, dtype=torch.long),
            "request_prompt": torch.zeros(max_requests, dtype=torch.long),
            "request_clamped": torch.zeros(max_requests, dtype=torch.bool),
        }
        token_tables = {
            "token_ids": torch.full((groups, max_tokens, slots), -1, dtype=torch.long),
            "token_coeffs": torch.zeros((groups, max_tokens, slots), dtype=torch.float32),
            "token_clamped": torch.zeros(max_tokens, dtype=torch.bool),
        }
        for name, table in {**request_tables, **token_tables}.items():
            self.register_buffer(name, table.to(device), persistent=False)
        on_host = torch.device(device).type == "cpu"
        # The host side the batch updates write to: the tables themselves on the CPU.
        self._host = {name: getattr(self, name) if on_host else table for name, table in request_tables.items()}
        self._dirty = False

    # --- per request, on the host -------------------------------------------------------------

    def set_request(self, row: int, program: Program | None, slots, prompt_length: int) -> None:
        """Row ``row`` of the persistent batch runs ``program`` (None: unsteered); ``slots`` holds
        its (ids, coeffs) per dictionary."""
        host = self._host
        if program is None:
            host["request_kind"][row] = UNSTEERED
        else:
            for group, (ids, coeffs) in enumerate(slots):
                host["request_ids"][group, row] = ids
                host["request_coeffs"][group, row] = coeffs
            host["request_kind"][row] = POSITION_KINDS[program.positions]
            host["request_prefix"][row] = program.prefix_length
            host["request_prompt"][row] = prompt_length
            host["request_clamped"][row] = program.mode == "clamp"
        self._dirty = True

    def clear_request(self, row: int) -> None:
        self._host["request_kind"][row] = UNSTEERED
        self._dirty = True

    def move_request(self, source: int, target: int, swap: bool) -> None:
        for table in self._host.values():
            by_request = table.movedim(1, 0) if table.dim() == 3 else table  # a view, requests first
            if swap:
                by_request[[target, source]] = by_request[[source, target]]
            else:
                by_request[target] = by_request[source]
        self._dirty = True

    def publish(self) -> None:
        """Copy the host's request tables to the device, if they changed (a no-op on the CPU)."""
        if self._dirty:
            for name, table in self._host.items():
                device_table = getattr(self, name)
                if device_table is not table:
                    device_table.copy_(table, non_blocking=True)
            self._dirty = False

    # --- per token, once per step ---------------------------------------------------------------

    def fill(self, positions: torch.Tensor, query_start_loc: torch.Tensor | None) -> None:
        """The token tables of a step: ``positions`` (T,) of each token in its sequence,
        ``query_start_loc`` (requests + 1,) where each request's tokens start (None for dummy
        runs: nothing is steered). One kernel on the device; the host never waits."""
        ops.fill_token_tables_(self.token_ids, self.token_coeffs, self.token_clamped, positions, query_start_loc,
                               self.request_ids, self.request_coeffs, self.request_kind, self.request_prefix,
                               self.request_prompt, self.request_clamped)

    # --- in the steered layers ------------------------------------------------------------------

    def steer(self, group: int, dictionary, bias, hidden: torch.Tensor, residual: torch.Tensor):
        """A decoder layer's ``(hidden, residual)`` output, steered; the residual stream is their sum.

        One op call, whose update goes into ``hidden`` alone (vLLM's next fused add + norm carries
        it into the stream). Clamp engines read the concepts' activations on the stream itself: the
        op reads both rows, and its per-token ``clamped`` flags pick the rows that clamp. The
        stream is rounded as ``(hidden + delta) + residual`` rather than ``(hidden + residual) +
        delta``: in half precision one rounding apart from the Hugging Face hooks' order.
        """
        rows = hidden.shape[0]
        coeffs = self.token_coeffs[group, :rows]
        ids = self.token_ids[group, :rows]
        if not self.clamp:
            ops.steer_prepared_(hidden, dictionary, ids, coeffs, "add", None, bias)
        else:
            ops.steer_prepared_(hidden, dictionary, ids, coeffs, "clamp", None, bias, None, None, residual,
                                self.token_clamped[:rows])
        return hidden, residual
