"""The OpenAI shapes of answers: model list, completions, stream chunks, usage; and what every
answer carries about what served it (the `switchboard` field and header)."""

from __future__ import annotations

import json
import time
from typing import Any

from switchboard_lora.serving.engines.interface import Generation
from switchboard_lora.serving.engines.tokens import Tokens
from switchboard_lora.serving.service import Served, Service, unservable

ROUTE_HEADER = "x-switchboard-route"


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


def completion_body(
    ident: str,
    model: str,
    served: Served,
    generation: Generation,
    chat: bool,
    tokens: Tokens,
    token_ids: bool = False,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": generation.finish_reason,
        "logprobs": logprobs_body(generation, tokens, chat),
    }
    if token_ids:  # vLLM's `return_token_ids`
        choice["token_ids"] = list(generation.token_ids)
    if chat:
        choice["message"] = {"role": "assistant", "content": generation.text}
    else:
        choice["text"] = generation.text
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(generation),
        "switchboard": served.to_json(),
    }


def stream_chunk(
    ident: str,
    model: str,
    created: int,
    chat: bool,
    text: str | None,
    finish: str | None,
    served: Served | None = None,
    *,
    token_ids: list[int] | None = None,
) -> str:
    """One server-sent event of a stream; the first carries `served` (what served it);
    `token_ids`, where asked for, the ids of the tokens this chunk completes."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if served is not None else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    payload: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if served is not None:
        payload["switchboard"] = served.to_json()
    return f"data: {json.dumps(payload)}\n\n"


def header_value(served: Served) -> dict[str, str]:
    return {ROUTE_HEADER: json.dumps(route_header(served), separators=(",", ":"))}
