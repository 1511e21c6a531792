"""``steerkern bench --learn``: learning throughput against AxBench's own loops, in one run.

- ReFT-r1: examples per second of steerkern's batched training (``G`` concepts per forward pass,
  batch ``6·G``) against AxBench's loop (one concept at a time, batch 6, the same hook math in
  plain PyTorch; ``steerkern.learn.axbench_loop``), every concept getting the same updates over
  AxBench's 3 epochs. steerkern runs the frozen layers below the steered one once per example of
  a chunk (``cache_frozen_layers``); AxBench's loop runs them at every step, as AxBench does.
- DiffMean: the rows of ``N`` concepts from one pass over the data against AxBench's per-concept
  loop (each concept's positives and its genre's negatives tokenized and run through the whole
  model); both timed from rows of data to rows of the dictionary. The loop's cost is the same for
  every concept, so it is timed over a sample of concepts (half before the one pass, half after)
  and scaled to ``N``. ReFT-r1's loops run in interleaved rounds; figures are medians.

The model is the demo's Gemma-2 from ``Gemma2Config`` (random weights: speed does not depend on
them) with its character tokenizer; texts are random words, instruction and response alike.
"""

from __future__ import annotations

import importlib
import random
import statistics
import time

import torch

from . import demo
from .bench import format_pairs, format_table
from .learn import axbench_loop, common
from .learn.data import read_training_data
from .learn.diffmean import diffmean_rows
from .learn.encoding import Encoder
from .learn.forward import frozen
from .learn.progress import Progress

reft = importlib.import_module(".learn.reft_r1", __package__)  # the module, not the function of that name

REFT_BATCHES = (6, 12, 24, 48, 96)
WORDS = ("the", "river", "ran", "slowly", "past", "old", "mill", "she", "walked", "home", "under", "a", "soft", "grey",
         "sky", "cat", "slept", "in", "warm", "light", "we", "talked", "about", "nothing", "for", "an", "hour")


def add_arguments(parser) -> None:
    from .cli import _comma_list, _positive_int

    group = parser.add_argument_group("learning (--learn)")
    group.add_argument("--learn", action="store_true", help="ReFT-r1 and DiffMean examples/s against AxBench's one-concept loops")
    group.add_argument("--learn-batches", type=_comma_list(int), default=list(REFT_BATCHES), metavar="B,...",
                       help="ReFT-r1 batch sizes, multiples of AxBench's 6 (default: 6,12,24,48,96)")
    group.add_argument("--learn-steps", type=_positive_int, default=3, metavar="N",
                       help="ReFT-r1 updates per concept and epoch (default: 3)")
    group.add_argument("--learn-epochs", type=_positive_int, default=3, metavar="E",
                       help="ReFT-r1 epochs over each concept's examples (default: 3, AxBench's)")
    group.add_argument("--learn-rounds", type=_positive_int, default=3, metavar="N", help="interleaved ReFT-r1 rounds, medians reported (default: 3)")
    group.add_argument("--diffmean-concepts", type=_positive_int, default=500, metavar="N", help="DiffMean concepts (default: 500)")
    group.add_argument("--diffmean-positives", type=_positive_int, default=72, metavar="N", help="positives per concept (default: 72, Concept500's)")
    group.add_argument("--diffmean-sample", type=_positive_int, default=20, metavar="N",
                       help="concepts the per-concept loop is timed on (default: 20)")


def synthetic_rows(concepts, positives, negatives_per_genre, genres=3, seed=0, words=5) -> list[dict]:
    """AxBench-layout rows of random words: ``positives`` per concept, negatives shared per genre."""
    rng = random.Random(seed)

    def text():
        return " ".join(rng.choice(WORDS) for _ in range(words))

    rows = [{"input": text(), "output": text(), "output_concept": f"concept {c}", "concept_genre": f"genre {c % genres}",
             "category": "positive", "concept_id": c} for c in range(concepts) for _ in range(positives)]
    rows += [{"input": text(), "output": text(), "output_concept": "", "concept_genre": f"genre {g}",
              "category": "negative", "concept_id": -1} for g in range(min(genres, concepts)) for _ in range(negatives_per_genre)]
    return rows


def bench_reft(model, tokenizer, layer, batches, steps, rounds=3, epochs=3) -> dict:
    """Examples/s of both ReFT-r1 loops, medians over ``rounds``; each concept has ``steps``
    batches of 6 (half positives) per epoch, for ``epochs`` epochs."""
    if any(batch % 6 for batch in batches):
        raise ValueError(f"ReFT-r1 batch sizes must be multiples of AxBench's 6 examples per concept, got {batches}")
    groups = [batch // 6 for batch in batches]
    concepts = max(groups)
    hyper = reft.Hyperparameters(n_epochs=epochs)
    setup = common.prepare(model, tokenizer, synthetic_rows(concepts, 3 * steps, 3 * steps, genres=1), layer)
    examples = concepts * 6 * steps * epochs

    def axbench():
        for concept in setup.data.concepts:
            axbench_loop.train_one_concept(model, setup.encoder, [setup.encoded[i] for i in concept.examples], layer, hyper)

    def steerkern(group):
        schedules = [reft.concept_batches(len(concept.examples), hyper) for concept in setup.data.concepts]
        with frozen(model):
            for start in range(0, concepts, group):
                members = range(start, min(start + group, concepts))
                trainer = reft.ChunkTrainer(model, setup, [setup.data.concepts[c] for c in members],
                                            [schedules[c] for c in members], hyper)
                trainer.train(Progress(0, "", enabled=False))

    _seconds(lambda: steerkern(1))  # warm-up: allocator, kernels, autograd graph
    # Rounds interleave the loops (in a rotating order), so a change in the machine's load hits
    # them alike; each ratio is taken within a round, then the median over rounds.
    providers = [("axbench", axbench)] + [(group, lambda group=group: steerkern(group)) for group in groups]
    seconds = {name: [] for name, _ in providers}
    for round_index in range(rounds):
        for name, run in providers[round_index % len(providers):] + providers[: round_index % len(providers)]:
            seconds[name].append(_seconds(run))
    baseline = statistics.median(seconds["axbench"])
    curve = []
    for batch, group in zip(batches, groups):
        ratios = [axbench_time / own for axbench_time, own in zip(seconds["axbench"], seconds[group])]
        median = statistics.median(seconds[group])
        curve.append({"batch": batch, "concepts_per_batch": group, "seconds": median,
                      "examples_per_s": examples / median, "speedup": statistics.median(ratios)})
    return {"concepts": concepts, "updates_per_concept": steps * epochs, "epochs": epochs, "examples": examples,
            "rounds": rounds, "axbench_seconds": baseline, "axbench_examples_per_s": examples / baseline, "steerkern": curve}


def bench_diffmean(model, tokenizer, layer, concepts, positives, sample) -> dict:
    rows = synthetic_rows(concepts, positives, positives)
    data = read_training_data(rows)
    sample = min(sample, concepts)

    def one_pass():
        setup = common.prepare(model, tokenizer, data, layer)
        diffmean_rows(model, setup)

    def per_concept_loop(chosen):
        encoder = Encoder(tokenizer)
        for concept in chosen:
            axbench_loop.diffmean_one_concept(model, encoder, [data.examples[i] for i in concept.positives],
                                              [data.examples[i] for i in concept.negatives], layer)

    # The loop's sample is timed half before and half after the one pass, so drift in the
    # machine's load between them evens out.
    half = sample // 2
    loop_seconds = _seconds(lambda: per_concept_loop(data.concepts[:half]))
    one_pass_seconds = _seconds(one_pass)
    loop_seconds = (loop_seconds + _seconds(lambda: per_concept_loop(data.concepts[half:sample]))) * concepts / sample
    return {"concepts": concepts, "positives_per_concept": positives, "negatives_per_genre": positives, "genres": 3,
            "examples": len(rows), "one_pass_seconds": one_pass_seconds, "per_concept_loop_seconds": loop_seconds,
            "loop_timed_on_concepts": sample, "speedup": loop_seconds / one_pass_seconds}


def _seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def run(args, device) -> dict:
    tokenizer = demo.build_tokenizer()
    model = demo.build_model(quick=args.quick, device=device)
    layer = demo.DEMO_LAYER
    config = model.config
    print(format_pairs([
        ("model", f"Gemma-2 from Gemma2Config, d={config.hidden_size}, {config.num_hidden_layers} layers, "
                  f"layer {layer} read and steered, {device}, float32"),
        ("threads", str(torch.get_num_threads())),
    ]))
    result = {"model": {"hidden_size": config.hidden_size, "layers": config.num_hidden_layers, "layer": layer}}
    result["reft_r1"] = reft_result = bench_reft(model, tokenizer, layer, args.learn_batches, args.learn_steps, args.learn_rounds,
                                                    args.learn_epochs)
    print(f"\nReFT-r1: {reft_result['concepts']} concepts x {reft_result['updates_per_concept']} updates of 6 examples each "
          f"({reft_result['epochs']} epochs), "
          f"medians of {reft_result['rounds']} interleaved rounds; AxBench's loop (one concept at a time, batch 6): "
          f"{reft_result['axbench_examples_per_s']:.1f} examples/s")
    print(format_table(["batch", "concepts/batch", "examples/s", "vs AxBench loop"],
                       [[r["batch"], r["concepts_per_batch"], f"{r['examples_per_s']:.1f}", f"{r['speedup']:.2f}×"]
                        for r in reft_result["steerkern"]]))
    result["diffmean"] = dm = bench_diffmean(model, tokenizer, layer, args.diffmean_concepts, args.diffmean_positives,
                                             args.diffmean_sample)
    print(f"\nDiffMean: {dm['concepts']} concepts x {dm['positives_per_concept']} positives, {dm['genres']} genres x "
          f"{dm['negatives_per_genre']} shared negatives ({dm['examples']} examples)")
    print(format_table(["", "seconds", "speed-up"], [
        ["one pass (steerkern.learn)", f"{dm['one_pass_seconds']:.1f}", f"{dm['speedup']:.1f}×"],
        [f"per-concept loop (AxBench; timed on {dm['loop_timed_on_concepts']}, scaled)", f"{dm['per_concept_loop_seconds']:.1f}", "1.0×"],
    ], align="left"))
    return result
