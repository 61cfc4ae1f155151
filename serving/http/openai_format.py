"""The OpenAI shapes of answers: model list, completions, stream chunks, usage; and what every
answer carries about what served it (the `switchboard` field and header)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from switchboard_lora.serving.engines.interface import Generation
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
    created = int(time.time())
    base_id = service.base.id
    data: list[dict[str, Any]] = [
        {
            "id": "auto",
            "object": "model",
            "created": created,
            "owned_by": "switchboard",
            "root": base_id,
            "parent": None,
        },
        {
            "id": "base",
            "object": "model",
            "created": created,
            "owned_by": "switchboard",
            "root": base_id,
            "parent": None,
        },
    ]
    for summary in service.registry.list_adapters():
        for version in service.registry.list_versions(summary.name):
            if unservable(version, service.base, service.engine) is not None:
                continue
            names = [version.ref] + [f"{version.name}@{a}" for a in version.aliases]
            if version.version == summary.aliases.get("prod", summary.latest):
                names.insert(0, version.name)
            for name in names:
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": int(version.created_at.timestamp()),
                        "owned_by": "switchboard",
                        "root": base_id,
                        "parent": version.parent,
                        "switchboard": {
                            "ref": version.ref,
                            "method": version.method,
                            "served_name": version.served_name,
                            "aliases": list(version.aliases),
                        },
                    }
                )
    return data


def route_header(served: Served) -> dict[str, Any]:
    data = served.to_json()
    keys = ("decision", "served", "adapters", "scores", "experiment")
    return {key: data[key] for key in keys if key in data}


def usage(generation: Generation) -> dict[str, int]:
    done = len(generation.token_ids)
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": done,
        "total_tokens": generation.prompt_tokens + done,
    }


def logprobs_body(generation: Generation, tokens: Tokens, chat: bool) -> dict[str, Any] | None:
    """OpenAI's `logprobs` of a choice: chat's list of tokens with their alternatives, or the
    completions API's parallel lists."""
    if generation.logprobs is None:
        return None
    text = tokens.token_text
    if chat:
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
    pieces = [text(step.token_id) for step in generation.logprobs]
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    return {
        "tokens": pieces,
        "token_logprobs": [step.logprob for step in generation.logprobs],
        "top_logprobs": [{text(t): lp for t, lp in step.top} for step in generation.logprobs],
        "text_offset": offsets,
    }


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def completion_body(reply: Reply, generation: Generation, tokens: Tokens) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": generation.finish_reason,
        "logprobs": logprobs_body(generation, tokens, reply.chat),
    }
    if reply.token_ids:
        choice["token_ids"] = list(generation.token_ids)
    if reply.chat:
        choice["message"] = {"role": "assistant", "content": generation.text}
    else:
        choice["text"] = generation.text
    return {
        **reply.head(chunk=False),
        "choices": [choice],
        "usage": usage(generation),
        "switchboard": reply.served.to_json(),
    }


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
    return _event({**reply.head(chunk=True), "choices": [], "usage": usage(generation)})


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def header_value(served: Served) -> dict[str, str]:
    return {ROUTE_HEADER: json.dumps(route_header(served), separators=(",", ":"))}
