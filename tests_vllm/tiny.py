"""A tiny Gemma-2 written to a folder vLLM can load, a dictionary file for it, and the oracle:
the same model in Hugging Face transformers, steered by ``steerkern.Steerer``.

vLLM's Gemma-2 ties the output embedding to the input one, so this model is tied too, with a
small embedding next to large layer weights: otherwise the tied embedding makes every token
predict itself and greedy tokens would say little about what happened inside the layers.
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

from steerkern import ConceptDictionary, Steerer

VOCAB = 160
HIDDEN = 128
LAYERS = 3
SLIDING_WINDOW = 16  # prompts in the tests are longer
STEERED_LAYERS = (1, 2)
CONCEPTS = 12


def build_model() -> Gemma2ForCausalLM:
    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=SLIDING_WINDOW, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=2, eos_token_id=1, attn_implementation="eager", dtype="float32",
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                scale = 0.02 if "embed_tokens" in name else 0.2
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def build_dictionary(seed: int = 1) -> ConceptDictionary:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(CONCEPTS, HIDDEN, generator=generator)
    rows = rows / rows.norm(dim=-1, keepdim=True)
    max_act = torch.rand(CONCEPTS, generator=generator) * 2 + 2
    return ConceptDictionary(rows, max_act=max_act, concepts=[f"topic {i}" for i in range(CONCEPTS)])


def write_model(folder: Path, model: Gemma2ForCausalLM) -> Path:
    model.save_pretrained(folder)
    words = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"w{i}" for i in range(4, VOCAB)]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")
    fast.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}))
    return folder


def prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [2] + torch.randint(4, VOCAB, (length - 1,), generator=generator).tolist()


def text_of(tokens: list[int]) -> str:
    return " ".join(f"w{token}" for token in tokens)


def hf_generate(model, dictionary, tokens: list[int], new_tokens: int, program: dict | None,
                layers=STEERED_LAYERS) -> list[int]:
    """Greedy tokens of one request alone through transformers, steered as ``program`` says
    (``skv.program``'s flat form; None: unsteered)."""
    input_ids = torch.tensor([tokens])
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        if program is None:
            output = model.generate(input_ids, **kwargs)
        else:
            steering = Steerer(model, dictionary, layers=list(layers)).steer(
                concepts=[program["steerkern_concepts"]], factors=[program["steerkern_factors"]],
                mode=program["steerkern_mode"], positions=program["steerkern_positions"],
                prefix_length=program["steerkern_prefix_length"],
            )
            with steering:
                output = model.generate(input_ids, **kwargs)
    return output[0, len(tokens):].tolist()


NEW_TOKENS = 8


def _mixed_requests() -> list:
    """One batch mixing every kind of program with unsteered requests; prompts longer than the
    sliding window, and longer than the engines' token budget per step (chunked prefill)."""
    import steerkern.vllm as skv

    return [
        (prompt(40, 0), None),
        (prompt(23, 1), skv.program(3, 2.0)),
        (prompt(9, 2), skv.program([4, "topic 7"], [1.5, -2.0], prefix_length=3)),
        (prompt(30, 3), skv.program(5, 1.5, mode="clamp")),
        (prompt(18, 4), skv.program([6, 10], [1.0, 1.5], mode="clamp", prefix_length=2)),
        (prompt(27, 5), skv.program(8, 2.0, positions="prompt")),
        (prompt(35, 6), skv.program(9, 2.0, positions="generation")),
        (prompt(20, 7), None),
    ]


MIXED = _mixed_requests()


def check_against_oracle(oracle, requests, outputs, layers=STEERED_LAYERS):
    """Each request's completions equal its tokens alone through transformers + Steerer."""
    for (tokens, program), completions in zip(requests, outputs):
        expected = oracle(tokens, NEW_TOKENS, program, layers)
        if program is not None:  # the comparison says something only if steering changes the tokens
            assert expected != oracle(tokens, NEW_TOKENS, None, layers), program
        for completion in completions:
            assert completion == expected, program


ENGINE_DEFAULTS = dict(
    dtype="float32", max_model_len=256, seed=0, enable_prefix_caching=True,
    # Few rows and a small token budget: requests join and leave mid-batch, and the longer
    # prompts are prefilled in chunks.
    max_num_seqs=4, max_num_batched_tokens=32, enable_chunked_prefill=True,
    block_size=16,  # the CPU default (128) is longer than the test prompts: nothing would be cached
)


@contextlib.contextmanager
def engine(model_dir, dictionary_file, *, layers=STEERED_LAYERS, max_concepts=4, clamp=True, **vllm_kwargs):
    """A steered ``vllm.LLM`` on the tiny model, shut down on leaving; ``dictionary_file`` may be
    a ``{layer: file}`` mapping (then ``layers`` is ignored)."""
    from vllm import LLM

    import steerkern.vllm as skv

    layers = None if isinstance(dictionary_file, dict) else list(layers)
    steering = skv.engine_args(dictionary=dictionary_file, layers=layers, max_concepts=max_concepts, clamp=clamp)
    llm = LLM(model=model_dir, **{**ENGINE_DEFAULTS, **vllm_kwargs}, **steering)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def vllm_generate(llm, requests, new_tokens: int, n: int = 1) -> list[list[list[int]]]:
    """Greedy tokens of each (prompt tokens, program) request, all submitted together; with
    ``n`` > 1, ``n`` completions sampled from the top token only (vLLM's greedy mode takes n = 1)."""
    from vllm import SamplingParams, TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=tokens) for tokens, _ in requests]
    sampling = dict(temperature=0) if n == 1 else dict(temperature=1.0, top_k=1, n=n)
    params = [SamplingParams(max_tokens=new_tokens, ignore_eos=True, extra_args=program, **sampling)
              for _, program in requests]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [[list(completion.token_ids) for completion in output.outputs] for output in outputs]
