"""Tiny, seeded causal LMs built from configs (no hub access): Gemma-2 and Llama.

The weights are drawn with a larger spread than the real initializers, and the output embedding is
untied (tied random embeddings make every token predict itself), so that greedy decoding of a
random model produces varied tokens and token-level comparisons mean something.
"""

from __future__ import annotations

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

PAD, BOS = 0, 2


def _finish(model, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    # No end-of-sequence token: generations always run to max_new_tokens, so lengths match.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model.to(dtype).eval()


def _shared_config(hidden_size, num_layers, vocab) -> dict:
    """What the tiny models have in common: two heads sharing one key/value head, untied output
    embedding (so greedy decoding gives varied tokens), eager attention."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=None,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def tiny_gemma2(hidden_size=64, num_layers=3, vocab=101, *, seed=0, dtype=torch.float32, sliding_window=16):
    """A Gemma-2 causal LM with eager attention (the attention AxBench runs Gemma-2 with)."""
    config = Gemma2Config(
        **_shared_config(hidden_size, num_layers, vocab),
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
    )
    torch.manual_seed(seed)
    return _finish(Gemma2ForCausalLM(config), seed, dtype)


def tiny_llama(hidden_size=48, num_layers=2, vocab=89, *, seed=0, dtype=torch.float32):
    config = LlamaConfig(**_shared_config(hidden_size, num_layers, vocab))
    torch.manual_seed(seed)
    return _finish(LlamaForCausalLM(config), seed, dtype)


def random_batch(lengths, vocab, *, padding_side="left", seed=0):
    """``input_ids``/``attention_mask`` for prompts of the given real lengths, each starting with BOS."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        tokens = torch.randint(3, vocab, (length,), generator=generator)
        tokens[0] = BOS
        columns = slice(width - length, width) if padding_side == "left" else slice(0, length)
        input_ids[row, columns] = tokens
        attention_mask[row, columns] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
