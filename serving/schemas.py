"""Request bodies of the OpenAI-compatible API (pydantic at the edge), with Switchboard's
extension field. Responses are built as plain dicts in the OpenAI shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MixPart(BaseModel):
    ref: str
    weight: float = Field(gt=0)


class SwitchboardOptions(BaseModel):
    """`"switchboard": {"mix": [{"ref": "legal", "weight": 0.7}, …]}` asks for an explicit
    weighted mix of LoRA adapters instead of `model`."""

    mix: list[MixPart] = Field(default_factory=list, min_length=1)


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with `usage` and no choices


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields we do not use are accepted

    model: str = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    switchboard: SwitchboardOptions | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)  # OpenAI's default for completions

    @property
    def token_limit(self) -> int:
        return self.max_tokens


class FeedbackRequest(BaseModel):
    """Feedback on one response (its `id`), tying an outcome to the experiment arm that
    served it: a thumbs up or down, and/or a score in [0, 1], and an optional label."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    thumbs: Literal["up", "down"] | None = None
    score: float | None = None  # range checked by the store, with the other rules
    label: str | None = Field(default=None, max_length=255)
