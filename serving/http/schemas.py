"""Request bodies of the OpenAI-compatible API (pydantic at the edge), with vLLM's sampling
and structured-output fields and Switchboard's extension field. Responses are built as plain
dicts in the OpenAI shape.

Limits answer 400 before any work: message count, stop strings, max_tokens, prompts and
choices, text that is not valid Unicode (lone surrogates). Every field of OpenAI's and vLLM's
requests is either served or, when it asks for something, refused with the field named
(`tools`, `use_beam_search`, …); their neutral values (`tools: []`, `best_of: 1`) are
accepted, as clients send them. docs/compatibility.md is the table.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from switchboard_lora.serving.engines.grammar import Guide
from switchboard_lora.serving.engines.interface import (
    MAX_TOP_LOGPROBS,
    SEED_RANGE,
    SamplingParams,
)

MAX_MESSAGES = 1024
MAX_STOPS = 4  # OpenAI's own limit
MAX_TOKENS = 1 << 20  # far above any context served; the context check gives the real limit
MAX_PROMPTS = 256  # prompts of one completions request
MAX_CHOICES = 256  # prompts times n
MAX_TOKEN_LIST = 4096  # stop_token_ids, allowed_token_ids, logit_bias entries


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid Unicode (a lone surrogate)") from exc
    return text


Text = Annotated[str, AfterValidator(_unicode)]

# Fields of OpenAI's and vLLM's requests that this server does not implement, and the values
# that ask for nothing (what clients send by default).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),  # "auto" with no tools chooses none
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    # vLLM's
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "bad_words": (None, []),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "truncation_side": (None,),
    "logprob_token_ids": (None,),
    "prompt_embeds": (None,),
    "add_special_tokens": (None, True),
    "priority": (None, 0),
    "kv_transfer_params": (None,),
    "ec_transfer_params": (None,),
    "vllm_xargs": (None,),
    "repetition_detection": (None,),
    "thinking_token_budget": (None,),
    "watermarking": (None, False),
    "return_token_offsets": (None, False),
    "mm_payload": (None, "tensors"),
    "return_mm_kwargs": (None, True),
    "routed_experts_prompt_start": (None, 0),
    "stream_interval": (None, 1),
    "guided_decoding_backend": (None, "xgrammar", "auto"),
    "guided_whitespace_pattern": (None,),
    # chat's
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "documents": (None, []),
    "include_reasoning": (None, True),
    "reasoning_effort": (None,),
    "media_io_kwargs": (None, {}),
    "mm_processor_kwargs": (None, {}),
    "return_prompt_text": (None, False),
}
# Fields accepted whatever their value, because they change nothing an answer holds:
# identifiers and a prefix cache's salt (vLLM's), OpenAI's storage and tiers.
IGNORED = ("request_id", "session_id", "cache_salt", "user", "store", "metadata", "service_tier")


class MixPart(BaseModel):
    ref: Text
    weight: float = Field(gt=0, le=1e6)


class SwitchboardOptions(BaseModel):
    """`"switchboard": {"mix": [{"ref": "legal", "weight": 0.7}, …]}` asks for an explicit
    weighted mix of LoRA adapters instead of `model`."""

    mix: list[MixPart] = Field(default_factory=list, min_length=1, max_length=16)


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with `usage` and no choices


TokenId = Annotated[int, Field(ge=0)]


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: dict[str, Any] | None = None

    def guide(self) -> Guide | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return Guide("json", '{"type":"object"}')
        if self.type == "structural_tag":
            raise Unsupported("response_format", "of type structural_tag")
        schema = (self.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise Misplaced(
                "response_format", "a json_schema response_format needs json_schema.schema"
            )
        return Guide("json", json.dumps(schema))


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: exactly one constraint."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[Text] | None = Field(default=None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool | None = None  # always so here (engines compile alike)


def _schema_text(schema: dict[str, Any] | str, field: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise Misplaced(field, f"{field} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise Misplaced(field, f"{field} must be a JSON schema (an object)")
    return json.dumps(schema)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked below: unknown fields asking for nothing

    model: Text = Field(min_length=1, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # None: 1, OpenAI's
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    switchboard: SwitchboardOptions | None = None
    # vLLM's: the answer's token ids beside its text (a gateway passes tokens on)
    return_token_ids: bool | None = False
    return_tokens_as_token_ids: bool | None = False  # logprobs' tokens named "token_id:N"
    # vLLM's sampling fields
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=MAX_TOKEN_LIST)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_TOKEN_LIST)
    allowed_token_ids: list[TokenId] | None = Field(
        default=None, min_length=1, max_length=MAX_TOKEN_LIST
    )
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # structured output: OpenAI's, vLLM's, and vLLM's older names
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[Text] | None = Field(default=None, min_length=1)
    guided_grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _bias_by_token_id(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not key.isascii() or not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, not {key[:20]!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError("logit_bias values must be between -100 and 100")
        return bias

    @model_validator(mode="after")
    def _nothing_unsupported(self) -> Self:
        for name, value in (self.model_extra or {}).items():
            neutral = NEUTRAL.get(name)
            if neutral is not None and value not in neutral:
                raise Unsupported(name)
        if self.stream_options is not None and not self.stream:  # as OpenAI and vLLM answer
            raise Misplaced("stream_options", "stream_options is only allowed with stream: true")
        if self.stream and self.logprob_count is not None:
            raise Unsupported("logprobs", "with stream")
        if self.stream and self.n > 1:
            raise Unsupported("n", "above 1 with stream")
        _ = self.guide  # one constraint at most, each well formed
        return self

    @property
    def guide(self) -> Guide | None:
        """The structured output asked for, by whichever of the fields names it."""
        given: list[tuple[str, Guide | None]] = []
        if self.response_format is not None:
            given.append(("response_format", self.response_format.guide()))
        if self.structured_outputs is not None:
            given.append(("structured_outputs", _structured(self.structured_outputs)))
        if self.guided_json is not None:
            given.append(
                ("guided_json", Guide("json", _schema_text(self.guided_json, "guided_json")))
            )
        if self.guided_regex is not None:
            given.append(("guided_regex", Guide("regex", self.guided_regex)))
        if self.guided_choice is not None:
            given.append(("guided_choice", Guide("choice", json.dumps(self.guided_choice))))
        if self.guided_grammar is not None:
            given.append(("guided_grammar", Guide("grammar", self.guided_grammar)))
        asked = [(name, guide) for name, guide in given if guide is not None]
        if len(asked) > 1:
            names = ", ".join(name for name, _ in asked)
            raise Misplaced(asked[1][0], f"one structured output constraint at most (got {names})")
        return asked[0][1] if asked else None

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def logprob_count(self) -> int | None:
        """None: no logprobs; k: the chosen token's and the k most likely per step."""
        raise NotImplementedError

    @property
    def prompt_logprob_count(self) -> int | None:
        """How many alternatives each prompt token's log probability comes with (None: the
        prompt's log probabilities are not wanted)."""
        return self.prompt_logprobs

    def sampling(self, max_tokens: int) -> SamplingParams:
        """The engines' settings for this request (one sample: `n` is the service's)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=self.stops,
            seed=self.seed,
            logprobs=self.logprob_count,
            ignore_eos=self.ignore_eos,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            min_tokens=self.min_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logit_bias=tuple((int(t), b) for t, b in (self.logit_bias or {}).items()),
            allowed_token_ids=None
            if self.allowed_token_ids is None
            else tuple(self.allowed_token_ids),
            prompt_logprobs=self.prompt_logprob_count,
            guide=self.guide,
        )


def _structured(given: StructuredOutputs) -> Guide:
    kinds = {
        "json": given.json_ is not None,
        "regex": given.regex is not None,
        "choice": given.choice is not None,
        "grammar": given.grammar is not None,
        "json_object": bool(given.json_object),
    }
    named = [kind for kind, set_ in kinds.items() if set_]
    if len(named) != 1:
        raise Misplaced("structured_outputs", "structured_outputs takes exactly one constraint")
    if given.json_ is not None:
        return Guide("json", _schema_text(given.json_, "structured_outputs.json"))
    if given.regex is not None:
        return Guide("regex", given.regex)
    if given.choice is not None:
        return Guide("choice", json.dumps(given.choice))
    if given.grammar is not None:
        return Guide("grammar", given.grammar)
    return Guide("json", '{"type":"object"}')


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
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:  # vLLM's chat echo repeats the last message; nothing here asks for it yet
            raise Unsupported("echo", "in chat completions (the completions API has it)")
        return echo

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


Prompt = Text | list[TokenId]


class CompletionRequest(_Sampling):
    """A prompt is text or token ids, or a list of either (one choice per prompt and sample,
    prompt by prompt, as OpenAI orders them)."""

    prompt: Prompt | list[Prompt]
    max_tokens: int | None = Field(default=16, ge=0, le=MAX_TOKENS)  # OpenAI's default
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool | None = False  # the prompt before the answer (with its logprobs, if asked)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt: Prompt | list[Prompt]) -> Prompt | list[Prompt]:
        many = (
            prompt
            if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
            else [prompt]
        )
        if not 1 <= len(many) <= MAX_PROMPTS:
            raise ValueError(f"between 1 and {MAX_PROMPTS} prompts")
        if any(len(one) == 0 for one in many):
            raise ValueError("a prompt must not be empty")
        return prompt

    @model_validator(mode="after")
    def _few_choices(self) -> Self:
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise Misplaced("n", f"prompts times n is at most {MAX_CHOICES}")
        if self.stream and len(self.prompts) > 1:
            raise Unsupported("prompt", "as a list of several prompts with stream")
        if self.stream and self.echo:
            raise Unsupported("echo", "with stream")
        return self

    @property
    def prompts(self) -> list[str | tuple[int, ...]]:
        """Each prompt: text, or token ids."""
        p = self.prompt
        many: list[Any] = p if isinstance(p, list) and p and not isinstance(p[0], int) else [p]
        return [one if isinstance(one, str) else tuple(one) for one in many]

    @property
    def token_limit(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def prompt_logprob_count(self) -> int | None:
        """Echo with logprobs shows the prompt's tokens' log probabilities too."""
        echoed = self.logprobs if self.echo else None
        asked = [k for k in (echoed, self.prompt_logprobs) if k is not None]
        return max(asked) if asked else None


class FeedbackRequest(BaseModel):
    """Feedback on one response (its `id`), tying an outcome to the experiment arm that
    served it: a thumbs up or down, and/or a score in [0, 1], and an optional label."""

    model_config = ConfigDict(extra="forbid")
    id: Text = Field(min_length=1, max_length=64)
    thumbs: Literal["up", "down"] | None = None
    score: float | None = None  # range checked by the store, with the other rules
    label: Text | None = Field(default=None, max_length=255)
