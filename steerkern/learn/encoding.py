"""Examples as token ids, the way AxBench feeds them to the model.

With a chat template, a text is the templated instruction (one user turn and the generation
prompt) followed by the raw response; without one, the instruction followed by the response. The
tokenizer adds BOS. Both methods read this form (AxBench's DiffMean templates the response as an
assistant turn, which leaves a few end-of-turn tokens after it; they are not read here). ``prefix_length`` is the template's common prefix (AxBench's
``get_prefix_length``: where the templates of two different messages first differ), or 1 (BOS)
without a template: positions from there to the end of the text are read and steered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Example

MAX_LENGTH = 1024  # AxBench truncates every text to this many tokens
IGNORE = -100  # label of a token the loss skips


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    prompt_length: int  # tokens before the response: the labels start here


@dataclass(frozen=True)
class Batch:
    """Right-padded, as AxBench trains: ``positions`` marks the rows read and steered."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


class Encoder:
    def __init__(self, tokenizer):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.prefix_length = self._chat_prefix_length() if self.chat else 1

    def encode(self, example: Example) -> Encoded:
        prompt = self._prompt(example.instruction)
        response = self.tokenizer.eos_token if example.response is None else example.response
        prompt_ids = self.tokenizer(prompt, max_length=MAX_LENGTH, truncation=True)["input_ids"]
        input_ids = self.tokenizer(prompt + response, max_length=MAX_LENGTH, truncation=True)["input_ids"]
        return Encoded(list(input_ids), len(prompt_ids))

    def collate(self, encoded: list[Encoded], device) -> Batch:
        width = max(len(item.input_ids) for item in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        lengths = torch.tensor([len(item.input_ids) for item in encoded])
        for row, item in enumerate(encoded):
            input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
            labels[row, item.prompt_length : len(item.input_ids)] = input_ids[row, item.prompt_length : len(item.input_ids)]
        columns = torch.arange(width)
        attention_mask = (columns < lengths[:, None]).long()
        positions = (columns >= self.prefix_length) & (columns < lengths[:, None])
        return Batch(input_ids.to(device), attention_mask.to(device), labels.to(device), positions.to(device))

    def _prompt(self, instruction: str) -> str:
        if not self.chat:
            return instruction
        ids = self._template([{"role": "user", "content": instruction}], add_generation_prompt=True)
        return self.tokenizer.decode(ids[1:])  # without BOS: the tokenizer adds it again

    def _template(self, messages, add_generation_prompt=False) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
        return list(ids)

    def _chat_prefix_length(self) -> int:
        first = self._template([{"role": "user", "content": "1"}])
        second = self._template([{"role": "user", "content": "2"}])
        return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), 0)
