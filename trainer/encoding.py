"""From examples to token ids and masked labels, and from those to padded, length-grouped
batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.trainer.data import Example

if TYPE_CHECKING:
    import torch

IGNORE = -100  # a label the loss skips (prompt and padding positions)


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with (masked out, so any id would do; the base's own if any)."""
    pad: int = tokenizer.pad_token_id
    return pad if pad is not None else int(tokenizer.eos_token_id)


def encode(tokenizer: Any, example: Example, max_length: int) -> Encoded | None:
    """Token ids and labels; the prompt part is masked. None if no answer token fits."""
    if example.is_chat:
        messages = [{"role": r, "content": c} for r, c in example.messages]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"line {example.line}: the chat template renders the prompt differently "
                "inside the full conversation; cannot mask it",
            )
        answer = full[len(prompt) :]
    else:
        prompt, answer = example.prompt, example.completion + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    if all(t == IGNORE for t in labels[1:]):  # the first label is never predicted
        return None
    return Encoded(ids, labels)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 64 batches, then shuffle the batches.

    Neighbours in a batch have similar lengths (little padding) and the order still varies
    from epoch to epoch: the trick of HF's `group_by_length`, applied here by default.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = 64 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[Encoded], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }
