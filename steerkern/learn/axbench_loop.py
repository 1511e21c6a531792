"""AxBench's loops as AxBench runs them. ReFT-r1: one concept at a time, its own ``torch.nn.Linear``
row, a shuffled ``DataLoader`` of batch 6, the intervention written in plain PyTorch (a forward
hook), the model's own loss, ``clip_grad_norm_``, AdamW and transformers' linear schedule.

DiffMean: one concept at a time, its positives and its genre's negatives tokenized for it and run
through the whole model in batches of 6.

They are the baselines ``steerkern bench --learn`` times against, and the oracles the tests hold
``reft_r1`` and ``diffmean`` to. The one departure from ``lsreft.py`` is the one ``reft_r1`` makes as
well: top-k is taken over an example's own positions only (AxBench's collator pads the position
list with an index of a padding token, which then competes for the top k).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..models import find_decoder_layers
from .forward import frozen, model_device, model_width, rewriting_layer
from .reft_r1 import INITIAL_VALUE, Hyperparameters


def train_one_concept(model, encoder, encoded, layer: int, hyper: Hyperparameters) -> torch.Tensor:
    """The row AxBench's loop learns from one concept's encoded examples (positives, then negatives)."""
    device = model_device(model)
    proj = torch.nn.Linear(model_width(model), 1).to(device)
    with torch.no_grad():
        proj.weight.fill_(INITIAL_VALUE)
        proj.bias.fill_(0)
    loader = DataLoader(encoded, shuffle=True, batch_size=hyper.batch_size, collate_fn=lambda items: items,
                        generator=torch.Generator().manual_seed(hyper.seed))
    optimizer = torch.optim.AdamW(proj.parameters(), lr=hyper.lr, weight_decay=hyper.weight_decay)
    total = hyper.n_epochs * len(loader)
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=total)
    step = 0
    with frozen(model):
        for _ in range(hyper.n_epochs):
            for items in loader:
                batch = encoder.collate(items, device)
                positions = batch.positions
                latents = []

                def intervene(hidden):
                    latent = torch.relu(hidden @ proj.weight.T)[..., 0].masked_fill(~positions, -1.0)
                    k = min(hyper.topk, latent.shape[1])
                    top, indices = latent.topk(k, dim=-1, sorted=False)
                    real = top >= 0
                    magnitude = (top * real).sum(dim=-1) / real.sum(dim=-1).clamp(min=1)
                    latents.append(latent.clamp(min=0).scatter(-1, indices, 0) * positions)
                    steering = magnitude[:, None, None] * proj.weight[None]  # (B, 1, d)
                    return torch.where(positions[..., None], hidden + steering, hidden)

                with rewriting_layer(model, layer, intervene):
                    loss = model(**batch.model_inputs(), labels=batch.labels, use_cache=False).loss
                counts = positions.sum(dim=-1)
                l1 = ((latents[0] * positions).sum(dim=-1) / (counts + torch.finfo(torch.float32).eps)).mean()
                loss = loss + step / total * hyper.coeff_latent_l1_loss * l1
                loss.backward()
                torch.nn.utils.clip_grad_norm_(proj.parameters(), hyper.max_grad_norm)
                with torch.no_grad():  # set_decoder_norm_to_unit_norm, remove_gradient_parallel_to_decoder_directions
                    proj.weight /= proj.weight.norm(dim=1, keepdim=True) + torch.finfo(proj.weight.dtype).eps
                    proj.weight.grad -= (proj.weight.grad * proj.weight).sum(dim=1, keepdim=True) * proj.weight
                step += 1
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    return proj.weight.detach()[0].cpu()


@torch.no_grad()
def diffmean_one_concept(model, encoder, positives, negatives, layer: int, batch_size=6) -> torch.Tensor:
    """AxBench's DiffMean for one concept: its examples tokenized and run through the whole model
    (``gather_residual_activations`` hooks the layer and lets the forward finish), batch 6."""
    device = model_device(model)
    encoded = [encoder.encode(example) for example in positives + negatives]
    labels = torch.tensor([1] * len(positives) + [0] * len(negatives))
    sums = {1: 0.0, 0: 0.0}
    counts = {1: 0, 0: 0}
    for start in range(0, len(encoded), batch_size):
        batch = encoder.collate(encoded[start : start + batch_size], device)
        captured = []
        handle = find_decoder_layers(model).layers[layer].register_forward_hook(
            lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
        try:
            model(**batch.model_inputs(), use_cache=False)
        finally:
            handle.remove()
        for label in (1, 0):
            chosen = batch.positions & (labels[start : start + batch_size] == label).to(device)[:, None]
            sums[label] = sums[label] + captured[0][chosen].double().sum(dim=0)
            counts[label] += int(chosen.sum())
    row = (sums[1] / counts[1] - sums[0] / counts[0]).float()
    return (row / (row.norm() + torch.finfo(row.dtype).eps)).cpu()
