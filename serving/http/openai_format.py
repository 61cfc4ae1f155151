"""The OpenAI shapes of answers: model list, completions, stream chunks, usage; and what every
answer carries about what served it (the `switchboard` field and header)."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from switchboard_lora.serving.engines.interface import Generation, TokenLogprob
from switchboard_lora.serving.engines.tokens import Tokens
from switchboard_lora.serving.served import Served
from switchboard_lora.serving.service import Service, unservable

ROUTE_HEADER = "x-switchboard-route"


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer's shape, fixed once its request is admitted: chat or text completion, the
    model name the client sent, what served it, and the extras the client asked for."""

    chat: bool
    model: str
    served: Served
    token_ids: bool = False  # vLLM's `return_token_ids`: ids beside the text
    include_usage: bool = False  # a stream's final usage chunk (`stream_options`)
    n: int = 1  # samples per prompt: choice i answers prompt i // n
    echoed: tuple[str, ...] = ()  # with `echo`: each prompt's text, shown before its answer
    top_logprobs: int = 0  # alternatives per token asked for by `logprobs` (echoed ones too)
    prompt_logprobs: int | None = None  # vLLM's `prompt_logprobs` field: alternatives per token
    tokens_as_ids: bool = False  # vLLM's `return_tokens_as_token_ids`: "token_id:N"
    created: int = field(default_factory=lambda: int(time.time()))
    unique: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def ident(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.unique}"

    def head(self, *, chunk: bool) -> dict[str, Any]:
        """The fields every body and chunk of this answer opens with."""
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}


def model_list(service: Service) -> list[dict[str, Any]]:
    """vLLM's shape: the base first (`base`; `auto`, the router, beside it), then each servable
    version under each of its names, its `parent` the base's id (vLLM's, for a LoRA); the
    version it was trained from, and the rest of Switchboard's lineage, under `switchboard`."""
    created = int(time.time())
    base_id = service.base.id

    def entry(
        name: str, at: int, parent: str | None, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        model: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": at,
            "owned_by": "switchboard",
            "root": base_id,
            "parent": parent,
            "max_model_len": service.engine.max_model_len,
        }
        if extra is not None:
            model["switchboard"] = extra
        return model

    data = [entry("base", created, None, None), entry("auto", created, None, {"router": True})]
    for summary in service.registry.list_adapters():
        for version in service.registry.list_versions(summary.name):
            if unservable(version, service.base, service.engine) is not None:
                continue
            names = [version.ref] + [f"{version.name}@{a}" for a in version.aliases]
            if version.version == summary.aliases.get("prod", summary.latest):
                names.insert(0, version.name)
            lineage = {
                "ref": version.ref,
                "method": version.method,
                "served_name": version.served_name,
                "aliases": list(version.aliases),
                "trained_from": version.parent,
            }
            at = int(version.created_at.timestamp())
            data.extend(entry(name, at, "base", lineage) for name in names)
    return data


def route_header(served: Served) -> dict[str, Any]:
    data = served.to_json()
    keys = ("decision", "served", "adapters", "scores", "experiment")
    return {key: data[key] for key in keys if key in data}


def usage(generations: list[Generation], n: int = 1) -> dict[str, int]:
    """Tokens of the whole answer: each prompt's once (not once per sample), every choice's."""
    prompt = sum(g.prompt_tokens for g in generations[::n])
    done = sum(len(g.token_ids) for g in generations)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def logprobs_body(reply: Reply, generation: Generation, tokens: Tokens) -> dict[str, Any] | None:
    """OpenAI's `logprobs` of a choice: chat's list of tokens with their alternatives, or the
    completions API's parallel lists; echoed, the prompt's tokens first (the first with no
    log probability, nothing precedes it)."""
    if generation.logprobs is None:
        return None
    text = _token_namer(reply, tokens)
    if reply.chat:
        return {
            "content": [
                {
                    **_chat_token(text(step.token_id), step.logprob),
                    "top_logprobs": [_chat_token(text(t), lp) for t, lp in step.top],
                }
                for step in generation.logprobs
            ],
            "refusal": None,
        }
    steps: list[TokenLogprob | None] = list(generation.logprobs)
    ids = [step.token_id for step in generation.logprobs]
    if reply.echoed:  # the prompt's steps carry as many alternatives as either field asked
        prompt = _trimmed(generation.prompt_logprobs, reply.top_logprobs)
        steps = list(prompt or [None] * len(generation.prompt_ids)) + steps
        ids = list(generation.prompt_ids) + ids
    pieces = [text(t) for t in ids]
    offsets = list(itertools.accumulate((len(p) for p in pieces[:-1]), initial=0))
    return {
        "tokens": pieces,
        "token_logprobs": [None if s is None else s.logprob for s in steps],
        "top_logprobs": [None if s is None else {text(t): lp for t, lp in s.top} for s in steps],
        "text_offset": offsets if pieces else [],
    }


def _trimmed(
    steps: tuple[TokenLogprob | None, ...] | None, k: int
) -> tuple[TokenLogprob | None, ...] | None:
    """Prompt steps with at most k alternatives each."""
    if steps is None:
        return None
    return tuple(None if s is None else replace(s, top=s.top[:k]) for s in steps)


def _token_namer(reply: Reply, tokens: Tokens) -> Callable[[int], str]:
    if reply.tokens_as_ids:
        return lambda token_id: f"token_id:{token_id}"
    return tokens.token_text


def prompt_logprobs_body(
    reply: Reply, generation: Generation, tokens: Tokens
) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's `prompt_logprobs`: per prompt token (the first: None), the token's and the most
    likely alternatives', by token id, with rank and text."""
    steps = _trimmed(generation.prompt_logprobs, reply.prompt_logprobs or 0)
    if steps is None:
        return None
    body: list[dict[str, dict[str, Any]] | None] = []
    for step in steps:
        if step is None:
            body.append(None)
            continue
        entry = {
            str(t): {"logprob": lp, "rank": rank, "decoded_token": tokens.token_text(t)}
            for rank, (t, lp) in enumerate(step.top, start=1)
        }
        entry[str(step.token_id)] = {
            "logprob": step.logprob,
            "rank": step.rank,
            "decoded_token": tokens.token_text(step.token_id),
        }
        body.append(entry)
    return body


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def completion_body(reply: Reply, generations: list[Generation], tokens: Tokens) -> dict[str, Any]:
    """The whole answer: one choice per generation, in order (prompt by prompt, its samples
    together)."""
    body: dict[str, Any] = {
        **reply.head(chunk=False),
        "choices": [_choice(reply, i, g, tokens) for i, g in enumerate(generations)],
        "usage": usage(generations, reply.n),
        "switchboard": reply.served.to_json(),
    }
    if reply.chat and reply.prompt_logprobs is not None:  # vLLM puts a chat's beside choices
        body["prompt_logprobs"] = prompt_logprobs_body(reply, generations[0], tokens)
    return body


def _choice(reply: Reply, index: int, generation: Generation, tokens: Tokens) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "finish_reason": generation.finish_reason,
        "logprobs": logprobs_body(reply, generation, tokens),
    }
    if reply.token_ids:
        choice["token_ids"] = list(generation.token_ids)
        choice["prompt_token_ids"] = list(generation.prompt_ids)
    if reply.chat:
        choice["message"] = {"role": "assistant", "content": generation.text}
    else:
        prefix = reply.echoed[index // reply.n] if reply.echoed else ""
        choice["text"] = prefix + generation.text
        if reply.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs_body(reply, generation, tokens)
    return choice


def stream_chunk(
    reply: Reply,
    text: str | None,
    finish: str | None,
    *,
    first: bool = False,
    token_ids: list[int] | None = None,
) -> str:
    """One server-sent event of a stream; the first carries what served it; `token_ids`,
    where asked for, the ids of the tokens this chunk completes."""
    if reply.chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    if reply.token_ids:
        choice["token_ids"] = token_ids or []
    payload = {**reply.head(chunk=True), "choices": [choice]}
    if first:
        payload["switchboard"] = reply.served.to_json()
    return _event(payload)


def usage_chunk(reply: Reply, generation: Generation) -> str:
    """A stream's last chunk before [DONE] when the client asked for usage: no choices."""
    return _event({**reply.head(chunk=True), "choices": [], "usage": usage([generation])})


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def header_value(served: Served) -> dict[str, str]:
    return {ROUTE_HEADER: json.dumps(route_header(served), separators=(",", ":"))}
