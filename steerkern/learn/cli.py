"""``steerkern learn``: learn a dictionary from AxBench-layout training data and save it.

Resumable: the run keeps a checkpoint beside the output (``OUTPUT.ckpt``, one per rank under
``torchrun``) and a run started again with the same arguments continues from it. Under
``torchrun --nproc-per-node N`` the work is shared out over a gloo process group and rank 0
writes the dictionary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

METHODS = ("diffmean", "reft-r1")


def add_parser(commands, model_help, add_device_dtype, positive_int):
    learn = commands.add_parser(
        "learn", help="learn a dictionary (DiffMean or ReFT-r1) from AxBench-layout examples",
        description="Learns one row per concept of AxBench's training layout (train_data.parquet with input, output, "
                    "output_concept, concept_genre, category, concept_id; metadata.jsonl beside it is read when present) "
                    "and saves a steerkern dictionary. Interrupted runs resume from their checkpoint; under torchrun the "
                    "concepts are shared out over the processes.")
    add_device_dtype(learn, "float32, bfloat16 or float16 for the model (default: bfloat16 on CUDA, float32 on the CPU)")
    learn.add_argument("--method", choices=METHODS, required=True, help="diffmean (one pass) or reft-r1 (AxBench's LsReFT)")
    learn.add_argument("--model", required=True, help=model_help)
    learn.add_argument("--data", required=True, help="train_data.parquet, its metadata.jsonl, or the folder holding them")
    learn.add_argument("--layer", type=int, required=True, help="the decoder layer whose output the rows read and steer")
    learn.add_argument("-o", "--output", required=True, metavar="DICT.safetensors", help="where to write the dictionary")
    learn.add_argument("--eval-data", metavar="PARQUET", help="held-out examples in the same layout: report each concept's ROC AUC")
    reft = learn.add_argument_group("ReFT-r1 (AxBench's names)")
    reft.add_argument("--n-epochs", type=positive_int, default=3, metavar="N", help="epochs (default: 3)")
    reft.add_argument("--batch-size", type=positive_int, default=6, metavar="B", help="examples of one concept per step (default: 6)")
    reft.add_argument("--concepts-per-batch", type=positive_int, default=8, metavar="G", help="concepts trained together in one forward pass (default: 8)")
    reft.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate, decayed linearly to 0 (default: 0.01)")
    reft.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    reft.add_argument("--topk", type=positive_int, default=8, metavar="K", help="latents averaged for the steering magnitude (default: 8)")
    reft.add_argument("--coeff-latent-l1-loss", type=float, default=0.005, metavar="λ", help="weight of the non-top-k latent penalty (default: 0.005)")
    reft.add_argument("--seed", type=int, default=42, help="seeds each concept's shuffling (default: 42)")
    reft.add_argument("--no-layer-cache", dest="cache_frozen_layers", action="store_false",
                      help="run the frozen layers below --layer at every step instead of once per example of a chunk "
                           "(less memory, slower)")
    learn.set_defaults(run=cmd_learn)
    return learn


def cmd_learn(args) -> int:
    from .. import cli
    from . import diffmean, evaluate, read_training_data, reft_r1

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise cli.UsageError(f"--output {args.output}: steerkern writes dictionaries as .safetensors files")
    if not output.resolve().parent.is_dir():
        raise cli.UsageError(f"--output {args.output}: its folder does not exist")
    data = read_training_data(args.data)  # bad data fails before the model loads
    rank, size = _join_process_group()
    device = cli.resolve_device(args.device)
    if device.type == "cuda" and size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model, tokenizer = cli.load_model(args.model, device, cli._single_dtype(args, device))
    tokenizer.padding_side = "right"  # AxBench trains right-padded
    checkpoint = output.with_name(output.name + (f".rank{rank}.ckpt" if size > 1 else ".ckpt"))
    if checkpoint.is_file():
        print(f"resuming from {checkpoint}", file=sys.stderr)
    shown = rank == 0
    if args.method == "diffmean":
        dictionary = diffmean(model, tokenizer, data, layer=args.layer, checkpoint=checkpoint, progress=shown)
    else:
        dictionary = reft_r1(model, tokenizer, data, layer=args.layer, epochs=args.n_epochs, batch_size=args.batch_size,
                             lr=args.lr, weight_decay=args.weight_decay, topk=args.topk,
                             coeff_latent_l1_loss=args.coeff_latent_l1_loss, seed=args.seed,
                             concepts_per_batch=args.concepts_per_batch, cache_frozen_layers=args.cache_frozen_layers,
                             checkpoint=checkpoint, progress=shown)
    if rank != 0:
        return 0
    dictionary.save(output)
    print(f"wrote {len(dictionary)} {dictionary.provenance['method']} concepts for layer {args.layer} to {output}")
    if args.eval_data:
        auc = evaluate(model, tokenizer, dictionary, args.eval_data, layer=args.layer)
        values = sorted(auc.values())
        print(f"held-out ROC AUC over {len(values)} concepts: mean {sum(values) / len(values):.3f}, "
              f"min {values[0]:.3f}, median {values[len(values) // 2]:.3f}")
    return 0


def _join_process_group() -> tuple[int, int]:
    """(rank, world size): joins torchrun's gloo group when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()
