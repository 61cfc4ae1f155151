"""What every engine takes and gives: requests with an adapter (or none), generations.

Engines see adapter *versions* only as served names and verified local directories (from
`Registry.checkout`): a served name is unique per content, so an engine never gets new
weights under a name it has seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from registry.errors import ErrorCode, SwitchboardError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    served_name: str
    path: Path
    method: Literal["lora", "prefix"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = {
            "max_tokens must be at least 1": self.max_tokens >= 1,
            "temperature must be between 0 and 2": 0.0 <= self.temperature <= 2.0,
            "top_p must be in (0, 1]": 0.0 < self.top_p <= 1.0,
        }
        wrong = [message for message, ok in problems.items() if not ok]
        if wrong:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "; ".join(wrong))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str  # already rendered (chat template applied by the caller)
    adapter: AdapterSpec | None = None
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: FinishReason


class Engine(Protocol):
    """One interface over vLLM and transformers+PEFT."""

    name: str
    max_model_len: int

    def supports(self, method: str) -> bool: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def check_context(self, prompt_tokens: int, max_tokens: int) -> None: ...

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]: ...


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)
