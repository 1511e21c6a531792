"""ReFT-r1 (AxBench's ``LsReFT``, ``axbench/models/lsreft.py``), many concepts per batch.

For a concept with row ``w`` and an example of it (a positive, or a negative of its genre, which
AxBench trains on too): per-token latents ``a_t = ReLU(h_t · w)`` at the intervened positions
(after the prefix), ``m = mean(top-k(a))`` over those positions (AxBench's collator lets a
padding position compete for the top k; here only the example's own do), ``h'_t = h_t + m·w``
there; the loss is the cross-entropy of the response tokens plus
``(step/T)·coeff_latent_l1_loss·mean(non-top-k a)``.
Each step clips the row's gradient to norm 1, sets the row to unit norm and removes the gradient
component parallel to it, then takes an AdamW step (linear decay to 0, no warm-up). Rows start
at 0.01 everywhere, as AxBench's ``TopKReLUIntervention``.

A concept's batches are AxBench's: its positives then its negatives, shuffled each epoch by a
generator seeded with ``seed``, ``batch_size`` at a time. ``concepts_per_batch`` concepts train
together: a step stacks one batch of each, every example steered and scored with its own
concept's row through per-row programs of ``steerkern.steer``, and the loss is the sum of the
concepts' own losses, so a row's gradient comes from its own examples only. Each row is its own
parameter with its own AdamW state, clipping and schedule: G concepts in one run give the rows
of G one-concept runs.

The layers up to the one steered are frozen and run before the intervention: with
``cache_frozen_layers`` (the default) each chunk computes their output once per example and every
step and epoch starts from it, instead of running them again for each of the example's uses
(epochs, and a genre's shared negatives in every concept of the chunk). It costs the memory of
the chunk's examples' layer outputs (examples × tokens × d in the model's dtype).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from ..functional import steer
from . import distributed
from .checkpoint import Checkpoint
from .common import finish, prepare
from .encoding import IGNORE
from .forward import LayerOutputs, frozen, model_device, rewriting_layer
from .progress import Progress

INITIAL_VALUE = 0.01  # AxBench's TopKReLUIntervention fills its row with this


@dataclass(frozen=True)
class Hyperparameters:
    """AxBench's names (``n_epochs`` is ``epochs`` in ``reft_r1``'s arguments)."""

    n_epochs: int = 3
    batch_size: int = 6
    lr: float = 0.01
    weight_decay: float = 0.0
    topk: int = 8
    coeff_latent_l1_loss: float = 0.005
    max_grad_norm: float = 1.0
    seed: int = 42


def concept_batches(n_examples: int, hyper: Hyperparameters) -> list[list[int]]:
    """One concept's batches over all epochs (positions in its example list), as AxBench's
    DataLoader draws them: per epoch a seed for its workers, the permutation, and the sampler's
    trailing permutation (of which it keeps none)."""
    generator = torch.Generator().manual_seed(hyper.seed)
    batches = []
    for _ in range(hyper.n_epochs):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(n_examples, generator=generator).tolist()
        torch.randperm(n_examples, generator=generator)
        batches += [order[start : start + hyper.batch_size] for start in range(0, n_examples, hyper.batch_size)]
    return batches


def reft_r1(model, tokenizer, data, layer: int, epochs=3, *, batch_size=6, lr=0.01, weight_decay=0.0, topk=8,
            coeff_latent_l1_loss=0.005, seed=42, concepts_per_batch=8, score_batch_size=32,
            cache_frozen_layers=True, checkpoint=None, checkpoint_every=20, progress=False):
    """Learn one ReFT-r1 row per concept of ``data``; returns a ``ConceptDictionary`` (row i = the
    i-th concept id in sorted order, ``max_act`` its largest sentence score over its positives).

    ``cache_frozen_layers``: run the layers up to ``layer`` once per example of a chunk (see the
    module's docstring); False recomputes them at every step, in less memory.
    ``checkpoint`` (a path) keeps the finished rows and, every ``checkpoint_every`` steps, the
    state of the concepts in training; a run started again with it resumes from there. Under
    ``torchrun`` the chunks of concepts are shared out among the ranks and every rank returns
    the whole dictionary.
    """
    if concepts_per_batch < 1:
        raise ValueError(f"concepts_per_batch must be at least 1, got {concepts_per_batch}")
    hyper = Hyperparameters(n_epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, topk=topk,
                            coeff_latent_l1_loss=coeff_latent_l1_loss, seed=seed)
    setup = prepare(model, tokenizer, data, layer)
    concepts = setup.data.concepts
    chunks = [list(range(start, min(start + concepts_per_batch, len(concepts))))
              for start in range(0, len(concepts), concepts_per_batch)]
    mine = distributed.my_share(chunks)

    run = {"method": "ReFT-r1", **setup.identity(), "concepts": len(concepts),
           "concepts_per_batch": concepts_per_batch, "ranks": distributed.world()[1], **asdict(hyper)}
    saver = Checkpoint(checkpoint, run) if checkpoint else None
    state = (saver.load() if saver else None) or {"rows": {}, "chunk": None}
    schedules = {c: concept_batches(len(concepts[c].examples), hyper) for chunk in mine for c in chunks[chunk]}
    total = sum(max(len(schedules[c]) for c in chunks[chunk]) for chunk in mine)
    done = sum(max(len(schedules[c]) for c in chunks[chunk]) for chunk in mine if chunks[chunk][0] in state["rows"])
    bar = Progress(total, "ReFT-r1", progress, done=done + (state["chunk"] or {}).get("step", 0))
    with frozen(model):
        for chunk in mine:
            members = chunks[chunk]
            if members[0] in state["rows"]:
                continue
            resume = state["chunk"] if state["chunk"] and state["chunk"]["chunk"] == chunk else None

            def save_progress(trainer, step):
                state["chunk"] = {"chunk": chunk, "step": step, **trainer.state_dict()}
                saver.save(state)

            trainer = ChunkTrainer(model, setup, [concepts[c] for c in members], [schedules[c] for c in members], hyper,
                                   cache_frozen_layers)
            rows = trainer.train(bar, resume, save_progress if saver else None, checkpoint_every)
            state["rows"].update({c: row for c, row in zip(members, rows)})
            state["chunk"] = None
            if saver:
                saver.save(state)
    bar.close()
    learned = distributed.gather({c: row for c, row in state["rows"].items() if any(c in chunks[k] for k in mine)})
    rows = torch.stack([learned[c] for c in range(len(concepts))])
    dictionary = finish(model, setup, rows, "ReFT-r1", asdict(hyper) | {"concepts_per_batch": concepts_per_batch},
                        score_batch_size)
    if saver:
        saver.remove()
    return dictionary


class ChunkTrainer:
    """The rows of a few concepts trained together, each with its own optimizer state and schedule."""

    def __init__(self, model, setup, concepts, schedules, hyper: Hyperparameters, cache_frozen_layers=True):
        self.model, self.setup, self.concepts, self.schedules, self.hyper = model, setup, concepts, schedules, hyper
        self.cache_frozen_layers = cache_frozen_layers
        self.layer_outputs = None
        self.device = model_device(model)
        self.rows = [torch.full((1, setup.width), INITIAL_VALUE, device=self.device, requires_grad=True) for _ in concepts]
        self.optimizer = torch.optim.AdamW(
            [{"params": [row]} for row in self.rows], lr=hyper.lr, weight_decay=hyper.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [_linear_decay(len(schedule)) for schedule in schedules]
        )

    def state_dict(self) -> dict:
        return {"rows": [row.detach().cpu() for row in self.rows], "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for row, saved in zip(self.rows, state["rows"]):
                row.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def train(self, bar, resume=None, save_progress=None, checkpoint_every=20) -> list[torch.Tensor]:
        first = 0
        if resume is not None:
            self.load_state_dict(resume)
            first = resume["step"]
        steps = max(len(schedule) for schedule in self.schedules)
        if self.cache_frozen_layers:
            used = {self.concepts[k].examples[i] for k, schedule in enumerate(self.schedules)
                    for batch in schedule[first:] for i in batch}
            self.layer_outputs = LayerOutputs(self.model, self.setup.layer, self.setup.encoder,
                                              {index: self.setup.encoded[index] for index in used})
        for step in range(first, steps):
            active = [k for k, schedule in enumerate(self.schedules) if step < len(schedule)]
            loss, examples = self._loss(step, active)
            loss.backward()
            self._step(active)
            bar.update(examples, loss.item())
            if save_progress and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                save_progress(self, step + 1)
        self.layer_outputs = None
        return [row.detach()[0].cpu() for row in self.rows]

    def _loss(self, step, active):
        items = [(k, index) for k in active for index in self.schedules[k][step]]
        examples = [self.concepts[k].examples[i] for k, i in items]
        batch = self.setup.encoder.collate([self.setup.encoded[i] for i in examples], self.device)
        group = torch.tensor([k for k, _ in items], device=self.device)
        dictionary = torch.cat(self.rows)
        latents = []

        def intervene(hidden):
            ids = group[:, None]
            zeros = torch.zeros(ids.shape, device=hidden.device)
            _, acts = steer(hidden, dictionary, ids, zeros, mode="detect")
            latent = acts[..., 0]
            magnitude, non_topk = _topk_mean(latent, batch.positions, self.hyper.topk)
            latents.append((latent, non_topk))
            steered, _ = steer(hidden, dictionary, ids, magnitude[:, None], mode="add", mask=batch.positions)
            return steered

        with contextlib.ExitStack() as stack:
            if self.layer_outputs is not None:
                cached = self.layer_outputs.collate(examples, batch.input_ids.shape[1])
                stack.enter_context(self.layer_outputs.replacing(self.model, cached))
            stack.enter_context(rewriting_layer(self.model, self.setup.layer, intervene))
            logits = self.model(**batch.model_inputs(), use_cache=False).logits
        token_loss, token_count = _response_loss(logits, batch.labels)
        latent, non_topk = latents[0]
        counts = batch.positions.sum(dim=1)
        l1 = (non_topk * batch.positions).sum(dim=1) / (counts + torch.finfo(latent.dtype).eps)

        groups = len(self.concepts)
        ce = torch.zeros(groups, device=self.device).index_add(0, group, token_loss)
        ce = ce / torch.zeros(groups, device=self.device).index_add(0, group, token_count).clamp(min=1)
        l1 = torch.zeros(groups, device=self.device).index_add(0, group, l1) / torch.bincount(group, minlength=groups).clamp(min=1)
        progress = torch.tensor([step / len(schedule) for schedule in self.schedules], device=self.device)
        per_concept = ce + progress * self.hyper.coeff_latent_l1_loss * l1
        return per_concept[active].sum(), len(items)

    def _step(self, active):
        # A finished concept's row has no gradient: AdamW leaves it as it is.
        for k, row in enumerate(self.rows):
            if k not in active:
                row.grad = None
                continue
            torch.nn.utils.clip_grad_norm_([row], self.hyper.max_grad_norm)
            with torch.no_grad():  # AxBench's set_decoder_norm_to_unit_norm, then the parallel gradient removed
                row /= row.norm(dim=1, keepdim=True) + torch.finfo(row.dtype).eps
                row.grad -= (row.grad * row).sum(dim=1, keepdim=True) * row
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()


def _linear_decay(total_steps):
    return lambda step: max(0.0, (total_steps - step) / total_steps)


def _topk_mean(latent, positions, k):
    """Per example, the mean of the k largest latents at its positions (all of them if fewer), and
    the latents with those k zeroed (zero outside the positions too)."""
    k = min(k, latent.shape[1])
    values, indices = latent.masked_fill(~positions, -1.0).topk(k, dim=1, sorted=False)
    chosen = values >= 0  # latents are ReLUs: only padding reads -1
    magnitude = (values * chosen).sum(dim=1) / chosen.sum(dim=1).clamp(min=1)
    keep = torch.ones_like(latent).scatter(1, indices, (~chosen).to(latent.dtype))
    return magnitude, latent * keep * positions


def _response_loss(logits, labels):
    """Per example, the summed cross-entropy of its response tokens and their number."""
    predicted, targets = logits[:, :-1].float(), labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(predicted.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    return losses.sum(dim=1), (targets != IGNORE).sum(dim=1).to(losses.dtype)
