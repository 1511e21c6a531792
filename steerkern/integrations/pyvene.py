"""pyvene interventions backed by steerkern's fused op, standing in for AxBench's.

AxBench steers with ``pyvene.IntervenableModel.generate(..., subspaces=[{"idx", "mag", "max_act",
"prefix_length"}])``; these classes take the same constructor arguments, the same ``proj``
weights (dictionary rows) and the same ``subspaces``, and run one ``steerkern.steer_`` call:

- ``FusedAdditionIntervention`` (AxBench ``AdditionIntervention``): h + mag·max_act·W[idx] at
  every position. Like AxBench's, it accepts ``prefix_length`` and does not use it.
- ``FusedSubspaceIntervention`` (AxBench ``SubspaceIntervention``): sets the concept coordinate
  to mag·max_act, leaving the first ``prefix_length`` positions of a prompt pass unchanged.

``idx`` may also be (B, K) to steer K concepts per sequence at once (``mag``/``max_act`` alike).
"""

from __future__ import annotations

import torch

from .. import ops

try:
    import pyvene
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("steerkern.integrations.pyvene needs pyvene: pip install pyvene") from error


class FusedAdditionIntervention(
    pyvene.SourcelessIntervention, pyvene.TrainableIntervention, pyvene.DistributedRepresentationIntervention
):
    """AxBench-compatible steering intervention; ``proj.weight`` (N, d) holds the dictionary rows."""

    mode = "add"

    def __init__(self, **kwargs):
        super().__init__(**kwargs, keep_last_dim=True)
        self.proj = torch.nn.Linear(self.embed_dim, kwargs["low_rank_dimension"], bias=True)

    @classmethod
    def from_dictionary(cls, dictionary):
        """An intervention whose rows are a ConceptDictionary's (or an (N, d) tensor's)."""
        weight = getattr(dictionary, "weight", dictionary)
        intervention = cls(embed_dim=weight.shape[1], low_rank_dimension=weight.shape[0])
        with torch.no_grad():
            intervention.proj.weight.copy_(weight)
            intervention.proj.bias.zero_()
        return intervention

    def forward(self, base, source=None, subspaces=None):
        ids = torch.as_tensor(subspaces["idx"], device=base.device).long().reshape(base.shape[0], -1)
        mag = torch.as_tensor(subspaces["mag"], device=base.device, dtype=torch.float32)
        max_act = torch.as_tensor(subspaces["max_act"], device=base.device, dtype=torch.float32)
        scale = mag * max_act  # a number, one per sequence (B,) or one per slot (B, K)
        coeffs = torch.broadcast_to(scale if scale.dim() == 2 else scale.reshape(-1, 1), ids.shape)
        output = base.clone(memory_format=torch.contiguous_format)
        ops.steer_(
            output,
            self.proj.weight.detach(),
            ids,
            coeffs.contiguous(),
            mode=self.mode,
            mask=self._rows_to_steer(base, subspaces),
            check_ids=False,  # the ids live on the device: checking them would sync at every step
        )
        return output

    def _rows_to_steer(self, base, subspaces):
        return None


class FusedSubspaceIntervention(FusedAdditionIntervention):
    """AxBench-compatible clamping intervention (``SubspaceIntervention``)."""

    mode = "clamp"

    def _rows_to_steer(self, base, subspaces):
        prefix_length = int(subspaces.get("prefix_length", 0) or 0)
        if base.shape[1] == 1 or prefix_length == 0:  # AxBench applies the prefix to prompt passes only
            return None
        columns = torch.arange(base.shape[1], device=base.device)
        return (columns >= prefix_length).expand(base.shape[0], -1)
