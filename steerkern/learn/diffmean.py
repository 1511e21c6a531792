"""DiffMean (AxBench ``axbench/models/mean.py``): per concept, the mean layer-L activation over the
tokens of its positives after the prefix, minus the same mean over the negatives of its genre,
set to unit norm.

AxBench runs one pass per concept; here one pass over the data serves every concept: each
example's token sum is added to its concept (a positive) or to its genre (a negative, shared by
all concepts of that genre). Sums are kept in float64, so their order does not matter.
"""

from __future__ import annotations

import torch

from . import distributed
from .checkpoint import Checkpoint
from .common import finish, prepare
from .forward import model_device, read_layer
from .progress import Progress


@torch.no_grad()
def diffmean(model, tokenizer, data, layer: int, *, batch_size=32, checkpoint=None, checkpoint_every=50, progress=False):
    """Learn one DiffMean row per concept of ``data`` (see ``steerkern.learn.read_training_data``).

    Returns a ``ConceptDictionary``: row i is the i-th concept id in sorted order, ``max_act`` its
    largest sentence score over its positives. ``checkpoint`` (a path) saves the sums every
    ``checkpoint_every`` batches and resumes from them.
    """
    setup = prepare(model, tokenizer, data, layer)
    saver = Checkpoint(checkpoint, {"method": "DiffMean", **setup.identity(), "batch_size": batch_size,
                                    "ranks": distributed.world()[1]}) if checkpoint else None
    rows = diffmean_rows(model, setup, batch_size, saver, checkpoint_every, progress)
    dictionary = finish(model, setup, rows, "DiffMean", {"batch_size": batch_size}, batch_size)
    if saver:
        saver.remove()
    return dictionary


@torch.no_grad()
def diffmean_rows(model, setup, batch_size=32, saver=None, checkpoint_every=50, progress=False) -> torch.Tensor:
    """The unit-norm DiffMean rows (N, d) of ``setup``'s concepts, from one pass over their examples."""
    concepts = setup.data.concepts
    genres = sorted({concept.genre for concept in concepts})
    # Where each used example's tokens go: (positive row or -1, genre of a negative or -1).
    targets = {}
    for row, concept in enumerate(concepts):
        targets.update({index: (row, -1) for index in concept.positives})
        targets.update({index: (-1, genres.index(concept.genre)) for index in concept.negatives})
    # Batches of similar lengths pad little; the float64 sums do not depend on the order.
    order = sorted(targets, key=lambda index: (len(setup.encoded[index].input_ids), index))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    mine = distributed.my_share(batches)

    state = (saver.load() if saver else None) or {
        "done": 0,
        "positive": torch.zeros(len(concepts), setup.width + 1, dtype=torch.float64),  # sums, then the count
        "negative": torch.zeros(len(genres), setup.width + 1, dtype=torch.float64),
    }
    device = model_device(model)
    bar = Progress(len(mine), "DiffMean", progress, done=state["done"])
    for step, batch_index in enumerate(mine):
        if step < state["done"]:
            continue
        indices = batches[batch_index]
        batch = setup.encoder.collate([setup.encoded[i] for i in indices], device)
        hidden = read_layer(model, setup.layer, batch).double()
        kept = batch.positions[..., None].double()
        sums = torch.cat([(hidden * kept).sum(dim=1), kept.sum(dim=1)], dim=1).cpu()  # (B, d + 1)
        rows, genre = (torch.tensor(column) for column in zip(*(targets[i] for i in indices)))
        state["positive"].index_add_(0, rows[rows >= 0], sums[rows >= 0])
        state["negative"].index_add_(0, genre[genre >= 0], sums[genre >= 0])
        state["done"] = step + 1
        bar.update(len(indices))
        if saver and state["done"] % checkpoint_every == 0:
            saver.save(state)
    bar.close()
    positive = distributed.sum_all(state["positive"].clone())
    negative = distributed.sum_all(state["negative"].clone())
    negative_of = negative[[genres.index(concept.genre) for concept in concepts]]
    rows = positive[:, :-1] / positive[:, -1:] - negative_of[:, :-1] / negative_of[:, -1:]
    rows = rows.float()
    return rows / (rows.norm(dim=1, keepdim=True) + torch.finfo(rows.dtype).eps)  # AxBench's set_decoder_norm_to_unit_norm
