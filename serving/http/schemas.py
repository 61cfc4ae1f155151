"""Request bodies of the OpenAI-compatible API (pydantic at the edge), with Switchboard's
extension field. Responses are built as plain dicts in the OpenAI shape.

Limits answer 400 before any work: message count, stop strings, max_tokens, text that is not
valid Unicode (lone surrogates). OpenAI fields that no engine here implements are refused with
the field named when they ask for something (`tools`, `response_format: json_object`, …);
their neutral values (`tools: []`, `frequency_penalty: 0`) are accepted, as clients send them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from switchboard_lora.serving.engines.interface import MAX_TOP_LOGPROBS, SEED_RANGE

MAX_MESSAGES = 1024
MAX_STOPS = 4  # OpenAI's own limit
MAX_TOKENS = 1 << 20  # far above any context served; the context check gives the real limit


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid Unicode (a lone surrogate)") from exc
    return text


Text = Annotated[str, AfterValidator(_unicode)]

# Fields this server does not implement, and the values that ask for nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),  # "auto" with no tools chooses none
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


class MixPart(BaseModel):
    ref: Text
    weight: float = Field(gt=0, le=1e6)


class SwitchboardOptions(BaseModel):
    """`"switchboard": {"mix": [{"ref": "legal", "weight": 0.7}, …]}` asks for an explicit
    weighted mix of LoRA adapters instead of `model`."""

    mix: list[MixPart] = Field(default_factory=list, min_length=1, max_length=16)


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with `usage` and no choices


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked below: unknown fields asking for nothing

    model: Text = Field(min_length=1, max_length=256)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    user: str | None = None
    switchboard: SwitchboardOptions | None = None
    # vLLM's extension: the answer's token ids beside its text (a gateway passes tokens on)
    return_token_ids: bool = False

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return stop

    @model_validator(mode="after")
    def _nothing_unsupported(self) -> Self:
        for name, value in (self.model_extra or {}).items():
            neutral = _NEUTRAL.get(name)
            if neutral is not None and value not in neutral:
                raise Unsupported(name)
        if self.stream_options is not None and not self.stream:  # as OpenAI and vLLM answer
            raise Misplaced("stream_options", "stream_options is only allowed with stream: true")
        if self.stream and self.logprob_count is not None:
            raise Unsupported("logprobs", "with stream")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def logprob_count(self) -> int | None:
        """None: no logprobs; k: the chosen token's and the k most likely per step."""
        raise NotImplementedError


class FieldError(ValueError):
    """A refusal of one field: the error's `param` names it, `code` says what kind."""

    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Unsupported(FieldError):
    """A field this server does not implement."""

    code = "unsupported_parameter"

    def __init__(self, field: str, how: str = "") -> None:
        super().__init__(
            field, f"{field} is not supported by this server{' ' + how if how else ''}"
        )


class Misplaced(FieldError):
    """A field given where the request does not allow it."""


class ChatMessage(BaseModel):
    """One message. `developer` (OpenAI's newer name for the system role) is the system role;
    content may be a list of parts, of which text parts are joined (any other part type is
    refused, named); an assistant's content may be null (a turn that only called a tool)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | None

    @field_validator("content", mode="before")
    @classmethod
    def _parts_joined(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise Unsupported("content", f"in a part of type {kind!r} (only text)")
            texts.append(part["text"])
        return "\n".join(texts)

    @model_validator(mode="after")
    def _plain(self) -> Self:
        if self.role == "developer":
            self.role = "system"
        if self.content is None:
            if self.role != "assistant":
                raise ValueError(f"a {self.role} message needs content")
            self.content = ""
        return self


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> Self:
        if self.top_logprobs and not self.logprobs:  # 0 asks for nothing, as clients send it
            raise Misplaced("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    @property
    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: Text = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS)  # OpenAI's default
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def token_limit(self) -> int:
        return self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs


class FeedbackRequest(BaseModel):
    """Feedback on one response (its `id`), tying an outcome to the experiment arm that
    served it: a thumbs up or down, and/or a score in [0, 1], and an optional label."""

    model_config = ConfigDict(extra="forbid")
    id: Text = Field(min_length=1, max_length=64)
    thumbs: Literal["up", "down"] | None = None
    score: float | None = None  # range checked by the store, with the other rules
    label: Text | None = Field(default=None, max_length=255)
