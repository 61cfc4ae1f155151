"""The base model's tokenizer, as both engines and the HTTP layer use it: chat rendering,
prompt encoding (what the engines are fed, so both see the same ids), decoding, and the
grammars of structured output over its vocabulary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchboard_lora.serving.engines.grammar import Grammars


class Tokens:
    def __init__(self, base_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(base_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = json.loads((base_dir / "config.json").read_text())
        # The logits' width: the model's embedding rows, which may exceed the tokenizer's.
        self.vocab_size: int = int(config.get("vocab_size") or len(self.tokenizer))

    @cached_property
    def grammars(self) -> Grammars:
        from switchboard_lora.serving.engines.grammar import Grammars

        stops = [] if self.eos_id is None else [self.eos_id]
        return Grammars(self.tokenizer, self.vocab_size, stops)

    @property
    def eos_id(self) -> int | None:
        eos: int | None = self.tokenizer.eos_token_id
        return eos

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        rendered: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return rendered

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text)["input_ids"]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def token_text(self, token_id: int) -> str:
        """One token as text (logprobs name tokens so); part of a character decodes to
        U+FFFD, as OpenAI's own tokens do."""
        text: str = self.tokenizer.decode([token_id])
        return text
