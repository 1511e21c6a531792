"""Concepts planted in a tiny Gemma-2 and in AxBench-layout data, for the learning tests.

Concept c has a marker character whose embedding carries a direction u_c, and a response
character that u_c predicts (its output embedding is u_c): a positive's instruction ends with
markers and its response is response characters; negatives are plain words. So positives carry
a feature negatives lack (what DiffMean measures) and steering along it produces the concept's
responses (what ReFT-r1 optimises). The decoder layers are damped so the feature reaches the
layer read without being mixed away, as a real model's concept features do.
"""

from __future__ import annotations

import random

import torch

from steerkern import demo
from tests.tiny_models import tiny_gemma2

MARKERS = "#@&"  # concept c: instruction marker MARKERS[c], response character RESPONSES[c]
RESPONSES = "$%*"
WORDS = ["the", "river", "cat", "sky", "home", "soft", "grey", "light", "slow", "warm", "we", "talked", "old", "mill"]
LAYER = 1
HIDDEN = 64
MARKER_SCALE, RESPONSE_SCALE = 3.0, 3.0  # strong enough for every concept at 3 epochs


def tokenizer():
    tok = demo.build_tokenizer()
    tok.padding_side = "right"
    return tok


def planted_model(concepts=len(MARKERS), hidden_size=HIDDEN, seed=0):
    tok = tokenizer()
    model = tiny_gemma2(hidden_size=hidden_size, num_layers=2, vocab=len(tok), seed=seed)
    directions = torch.linalg.qr(torch.randn(hidden_size, concepts, generator=torch.Generator().manual_seed(seed + 1)))[0].T
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.2)
            layer.mlp.down_proj.weight.mul_(0.2)
        for concept, direction in enumerate(directions):
            model.model.embed_tokens.weight[tok.convert_tokens_to_ids(MARKERS[concept])] += MARKER_SCALE * direction
            model.lm_head.weight[tok.convert_tokens_to_ids(RESPONSES[concept])] = RESPONSE_SCALE * direction
    return model


def _sentence(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def rows(positives=24, negatives=24, concepts=len(MARKERS), seed=0, genre="text", first_id=0):
    """AxBench-layout rows: ``positives`` per concept, then ``negatives`` shared by the genre."""
    rng = random.Random(seed)
    out = []
    for concept in range(concepts):
        for _ in range(positives):
            out.append({"input": f"{_sentence(rng, 2)} {MARKERS[concept] * 3}", "output": RESPONSES[concept] * 8,
                        "output_concept": f"planted concept {MARKERS[concept]}", "concept_genre": genre,
                        "category": "positive", "concept_id": first_id + concept})
    for _ in range(negatives):
        out.append({"input": _sentence(rng, 2), "output": _sentence(rng, 2), "output_concept": "", "concept_genre": genre,
                    "category": "negative", "concept_id": -1})
    return out
