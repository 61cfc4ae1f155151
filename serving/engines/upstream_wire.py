"""What a gateway sends an upstream and what it accepts back.

An upstream's answer is not trusted: each event (a streamed chunk, or the whole answer) is
validated against the completions API's shape, token ids against the base's vocabulary, and
a stream must end with `[DONE]`. Anything else is a `BadAnswer` naming the upstream (a 502,
or an error event in a stream), never a success with nothing in it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.engines.interface import SamplingParams, TokenLogprob


class BadAnswer(Exception):
    """The upstream answered something that is not a completions answer."""


class _Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    token_ids: list[StrictInt] | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: StrictInt


class Event(BaseModel):
    """One streamed chunk of a completion, or the whole answer."""

    model_config = ConfigDict(extra="ignore")
    choices: list[_Choice]
    usage: _Usage | None = None

    @property
    def choice(self) -> _Choice:
        return self.choices[0] if self.choices else _Choice()


def request_fields(p: SamplingParams) -> dict[str, Any]:
    """Sampling settings as the completions API's fields (vLLM's names, which a Switchboard
    upstream takes too); settings at their neutral value are left out."""
    fields: dict[str, Any] = {
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "stop": list(p.stop),
        "seed": p.seed,
        "logprobs": p.logprobs,
        "ignore_eos": p.ignore_eos or None,
        "top_k": p.top_k if p.top_k > 0 else None,
        "min_p": p.min_p or None,
        "repetition_penalty": p.repetition_penalty if p.repetition_penalty != 1.0 else None,
        "presence_penalty": p.presence_penalty or None,
        "frequency_penalty": p.frequency_penalty or None,
        "min_tokens": p.min_tokens or None,
        "stop_token_ids": list(p.stop_token_ids) or None,
        "logit_bias": {str(t): b for t, b in p.logit_bias} or None,
        "allowed_token_ids": None if p.allowed_token_ids is None else list(p.allowed_token_ids),
    }
    if p.guide is not None:
        spec = json.loads(p.guide.spec) if p.guide.kind in ("json", "choice") else p.guide.spec
        fields["structured_outputs"] = {p.guide.kind: spec}
    return {name: value for name, value in fields.items() if value is not None}


def logprobs_of(chunks: list[Any], k: int) -> tuple[TokenLogprob, ...]:
    """The completions API's logprobs (the parallel lists of each chunk) as token ids' log
    probabilities; the upstream names tokens as `token_id:N` (asked for)."""
    steps = []
    try:
        for chunk in chunks:
            for token, logprob, top in zip(
                chunk.tokens, chunk.token_logprobs, chunk.top_logprobs, strict=True
            ):
                alternatives = tuple((_token_id(t), lp) for t, lp in (top or {}).items())[:k]
                steps.append(TokenLogprob(_token_id(token), logprob or 0.0, alternatives))
    except ValueError as exc:
        raise BadAnswer(f"its logprobs do not name token ids: {exc}") from exc
    return tuple(steps)


def _token_id(name: str) -> int:
    return int(name.removeprefix("token_id:"))


def refusal(url: str, answer: httpx.Response) -> Exception:
    """An upstream's non-200 answer: its own 4xx passed on; a 5xx may go to another."""
    try:
        message = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = answer.text[:500]
    if answer.status_code >= 500:
        return BadAnswer(f"{answer.status_code} {message}")
    code = ErrorCode.NOT_FOUND if answer.status_code == 404 else ErrorCode.INVALID_INPUT
    return SwitchboardError(code, f"upstream {url}: {message}")


def parse(data: str | bytes, vocab_size: int) -> Event:
    try:
        event = Event.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the answer"
        raise BadAnswer(f"not a completions answer ({where}: {first['msg']})") from None
    for choice in event.choices:
        odd = [t for t in choice.token_ids or () if not 0 <= t < vocab_size]
        if odd:
            raise BadAnswer(f"token ids outside the vocabulary of {vocab_size}: {odd[:3]}")
    return event


async def events(answer: httpx.Response, vocab_size: int) -> AsyncIterator[Event]:
    """A completions answer's events: the chunks of a server-sent event stream up to its
    `[DONE]`, or the one a plain answer amounts to."""
    kind = answer.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        if not kind.startswith("application/json"):
            raise BadAnswer(f"answered {kind or 'no content type'}, not JSON or an event stream")
        yield parse(await answer.aread(), vocab_size)
        return
    async for line in answer.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if '"error"' in data:  # an error event (tried first: it is no completion chunk)
            try:
                error = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                error = None
            if error is not None:
                message = error.get("message", error) if isinstance(error, dict) else error
                raise BadAnswer(f"its stream ended with an error: {message}")
        yield parse(data, vocab_size)
    raise BadAnswer("its stream ended without [DONE]")
