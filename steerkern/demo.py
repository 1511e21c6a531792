"""The embedded demo: everything ``--model demo`` / ``--dictionary demo`` and ``steerkern demo`` use,
built on the spot with no download.

- The model is a Gemma-2 (``Gemma2ForCausalLM``) built from ``Gemma2Config`` at Gemma-2-2b's
  hidden size (2304) with a few layers and **random weights**: its generations are noise. The
  weights are drawn with a spread that keeps greedy decoding varied, and there is no
  end-of-sequence token, so every generation runs to its length.
- The tokenizer is a character tokenizer over printable ASCII (one token per character, other
  characters become ``<unk>``), built with the ``tokenizers`` library, with Gemma's special tokens.
- The dictionary holds DiffMean concept vectors learned on that model with ``steerkern.learn``:
  for each concept, the mean activation leaving decoder layer ``DEMO_LAYER`` over a few example
  texts minus the mean over all examples, unit-normed, with ``max_act`` its largest activation on
  its own examples (AxBench's scale for steering factors). It is saved in steerkern's
  ``.safetensors`` format and read back.

With random weights, detection can only pick up what differs in the characters (digits, symbols,
capitals...), which is what the example texts are chosen to show.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast
from transformers.initialization import no_init_weights

from . import bench, learn
from ._backend import build_info
from .dictionary import ConceptDictionary
from .hooks import Steerer

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # Gemma's ids 0..3
PAD, BOS = 0, 2
DEMO_LAYER = 1  # the layer the demo dictionary is made for and read at
FULL_SIZE = {"hidden_size": 2304, "num_layers": 4, "intermediate_size": 2304, "heads": 8, "head_dim": 256}
QUICK_SIZE = {"hidden_size": 256, "num_layers": 3, "intermediate_size": 512, "heads": 2, "head_dim": 64}

CONCEPT_EXAMPLES = {
    "numbers and digits": [
        "The invoice total was 4821.57 for 36 items.",
        "Call 555-0199 before 10:45 on 2024-03-18.",
        "Pi is 3.14159 and e is 2.71828.",
        "Room 1207, floor 12, door code 9930.",
    ],
    "source code": [
        "def add(x, y): return x + y",
        "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "if x is None: raise ValueError('x')",
        "const f = (a, b) => a * b;",
    ],
    "shouting in capital letters": [
        "STOP RIGHT THERE AND LISTEN",
        "THIS IS THE FINAL WARNING",
        "WE WON THE CUP AGAIN",
        "DO NOT OPEN THAT DOOR",
    ],
    "questions": [
        "Where did you put the keys?",
        "Why is the sky blue?",
        "Who is coming to dinner tonight?",
        "How long does the trip take?",
    ],
    "quiet lowercase prose": [
        "the river ran slowly past the old mill",
        "she walked home under a soft grey sky",
        "a cat slept in the warm afternoon light",
        "we talked about nothing for an hour",
    ],
    "punctuation and symbols": [
        "!!! ??? ... ;;; :::",
        "#tags @users & more % off",
        "*** --- +++ === ~~~",
        "[1] (2) {3} <4> |5|",
    ],
}

# Prompts the demo reads and steers: none of them is one of the examples above.
DEMO_PROMPTS = [
    "call 555-0123 at 9:45 on 12/04",
    "if (x[i] == y) { z += 1; }",
    "WHAT A GAME THAT WAS",
    "the garden was still and quiet",
    "What time is it now?",
]
# One steering program per prompt: (concept, factor) pairs; factors follow AxBench's range.
DEMO_PROGRAMS = [
    [("source code", 4.0)],
    [("numbers and digits", 2.0), ("questions", 2.0)],
    [("quiet lowercase prose", 8.0)],
    [("shouting in capital letters", 4.0)],
    [("punctuation and symbols", 4.0)],
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, ``<bos>`` prepended, padding on the left."""
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *map(chr, range(32, 127))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_model(*, quick=False, num_layers=None, vocab_size=None, device="cpu", dtype=torch.float32, seed=0):
    """A Gemma-2 with random weights; ``quick`` shrinks it to d = 256 for fast checks."""
    size = QUICK_SIZE if quick else FULL_SIZE
    config = Gemma2Config(
        vocab_size=vocab_size or len(build_tokenizer()),
        hidden_size=size["hidden_size"],
        intermediate_size=size["intermediate_size"],
        num_hidden_layers=num_layers or size["num_layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"] // 2,
        head_dim=size["head_dim"],
        query_pre_attn_scalar=size["head_dim"],
        max_position_embeddings=1024,
        sliding_window=1024,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=None,
        tie_word_embeddings=False,  # tied embeddings make a random model echo its last token
        attn_implementation="eager",
    )
    with no_init_weights():  # every matrix is drawn below; the norms start at zero either way
        model = Gemma2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:  # unit-variance outputs per layer: varied greedy tokens
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model.to(device=device, dtype=dtype).eval()


def demo_training_rows() -> list[dict]:
    """``CONCEPT_EXAMPLES`` in AxBench's training layout: each text a positive of its concept and,
    as a negative of the one genre, part of the baseline every concept is measured against."""
    rows = []
    for concept_id, (name, texts) in enumerate(CONCEPT_EXAMPLES.items()):
        for text in texts:
            common = {"input": text, "output": "", "output_concept": name, "concept_genre": "demo"}
            rows.append({**common, "category": "positive", "concept_id": concept_id})
            rows.append({**common, "category": "negative", "concept_id": -1})
    return rows


def diffmean_dictionary(model, tokenizer, layer: int) -> ConceptDictionary:
    """DiffMean rows learned by ``steerkern.learn`` from ``CONCEPT_EXAMPLES``, with their max_act."""
    return learn.diffmean(model, tokenizer, demo_training_rows(), layer=layer)


def demo_dictionary(model, tokenizer, layer: int = DEMO_LAYER) -> tuple[ConceptDictionary, int]:
    """The demo dictionary after a round trip through steerkern's file format, and the file's size."""
    dictionary = diffmean_dictionary(model, tokenizer, layer)
    with tempfile.TemporaryDirectory(prefix="steerkern-demo-") as folder:
        path = Path(folder) / "demo_dictionary.safetensors"
        dictionary.save(path)
        size = path.stat().st_size
        reloaded = ConceptDictionary.load(path)  # a mapping of the file stays valid once it is deleted
    return reloaded, size


def run_demo(*, device, dtype, quick=False) -> None:
    """Build, read, steer, time: the walk-through ``steerkern demo`` prints."""
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(quick=quick, device=device, dtype=dtype)
    dictionary, file_size = demo_dictionary(model, tokenizer)
    config = model.config
    params = sum(parameter.numel() for parameter in model.parameters())
    backend = build_info()["backend"]
    print("steerkern demo: an embedded Gemma-2 with random weights, so its texts are noise; it shows the machinery:\n"
          "a dictionary made, saved and reloaded, concepts read, each prompt of a batch steered with its own concepts.\n")
    print(bench.format_pairs([
        ("model", f"Gemma-2 from Gemma2Config: d={config.hidden_size}, {config.num_hidden_layers} layers, "
                  f"{config.vocab_size}-token character vocabulary, {params / 1e6:.0f}M random weights ({device}, {str(dtype).removeprefix('torch.')})"),
        ("dictionary", f"{len(dictionary)} DiffMean concepts for layer {DEMO_LAYER}, saved in steerkern's .safetensors format "
                       f"({file_size / 1024:.0f} KiB) and reloaded"),
        ("backend", backend),
    ]))
    steerer = Steerer(model, dictionary, layers=[DEMO_LAYER])

    batch = tokenizer(DEMO_PROMPTS, return_tensors="pt", padding=True).to(device)
    with torch.no_grad(), steerer.detect(concepts="all", top_k=3, prefix_length=1) as readout:
        model(**batch)
    top = readout.top_k
    rows = [[repr(prompt), *(f"{name} {score:.1f}" for name, score in zip(names, scores))]
            for prompt, names, scores in zip(DEMO_PROMPTS, top.names, top.scores.float().tolist())]
    print(f"\nDetection at layer {DEMO_LAYER}: the top concepts of each prompt (score: max over its tokens)")
    print(bench.format_table(["prompt", "1st", "2nd", "3rd"], rows, align="left"))

    new_tokens = 8 if quick else 24
    prompts = DEMO_PROMPTS * 2  # each prompt twice in one batch: once unsteered, once with its program
    programs = [[]] * len(DEMO_PROMPTS) + DEMO_PROGRAMS
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    hooks = steerer.steer(concepts=[[c for c, _ in p] for p in programs], factors=[[f for _, f in p] for p in programs])
    with torch.no_grad(), hooks:
        output = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\nSteering at layer {DEMO_LAYER}: one batch of {len(prompts)} rows, each prompt unsteered and with its own "
          f"program (add, all positions, greedy, {new_tokens} tokens)")
    rows = []
    for index, (prompt, program) in enumerate(zip(DEMO_PROMPTS, DEMO_PROGRAMS)):
        label = ", ".join(f"{concept} ×{factor:g}" for concept, factor in program)
        rows += [[repr(prompt), "unsteered", repr(texts[index])], ["", label, repr(texts[len(DEMO_PROMPTS) + index])]]
    print(bench.format_table(["prompt", "program", "continuation"], rows, align="left"))

    tokens, width = (256, 256) if quick else (4096, config.hidden_size)
    name = str(dtype).removeprefix("torch.")
    cases = [bench.Case("steer", tokens, width, name, k=4, mode=mode) for mode in ("add", "clamp", "detect")]
    results = bench.run_cases(cases, torch.device(device), providers=["steerkern", "reference", "naive", "roof"], rounds=7, budget_s=0.3)
    print(f"\nSpeed of steer_ at d={width}: T={tokens} rows, K=4 per-token programs from 32 of 16384 concepts "
          "(roof: buf.mul_(1.0) over a float32 buffer of the same bytes)")
    print(bench.steer_table(results))
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
