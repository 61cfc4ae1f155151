"""Streaming answers as server-sent events: tokens as they come, never half a character or
the start of a stop string, then the finish reason, usage on request, and [DONE].

With `return_token_ids` (vLLM's extension, which a gateway in front of this server asks for)
each chunk also carries the ids of the tokens it completes; together they are the answer's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from switchboard_lora.serving.engines.interface import Generation, GenerationRequest
from switchboard_lora.serving.http.errors import error_event
from switchboard_lora.serving.http.openai_format import stream_chunk, usage
from switchboard_lora.serving.service import Served, Service

Observe = Callable[[Generation], Awaitable[None]]


async def stream(
    service: Service,
    generation_request: GenerationRequest,
    served: Served,
    model: str,
    ident: str,
    chat: bool,
    observe: Observe,
    *,
    include_usage: bool,
    token_ids: bool,
) -> AsyncIterator[str]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(service.generate(generation_request, queue.put_nowait))
    try:
        tokens: list[int] = []
        sent = ""
        given = 0  # how many of the tokens' ids chunks have carried
        created = int(time.time())

        def chunk(
            text: str | None, finish: str | None, ids: list[int] | None = None, first: bool = False
        ) -> str:
            return stream_chunk(
                ident,
                model,
                created,
                chat,
                text,
                finish,
                served if first else None,
                token_ids=(ids or []) if token_ids else None,
            )

        yield chunk(None, None, first=True)
        stops = generation_request.params.stop
        while not (task.done() and queue.empty()):
            try:
                tokens.append(await asyncio.wait_for(queue.get(), timeout=0.05))
            except TimeoutError:
                continue
            text = service.engine.tokens.decode(tokens)
            if text.endswith("\ufffd"):
                continue  # half of a multi-byte character: wait for the rest
            if any(s in text for s in stops):
                continue  # the final text (cut at the stop) is sent below
            if stops:  # hold back what may be the start of a stop string
                hold = max((len(s) - 1 for s in stops), default=0)
                text = text[: max(len(sent), len(text) - hold)]
            if len(text) > len(sent):
                yield chunk(text[len(sent) :], None, tokens[given:])
                sent, given = text, len(tokens)
        try:
            generation = await task
        except Exception as exc:  # headers are sent: the error goes in the stream, as OpenAI's
            yield f"data: {json.dumps(error_event(exc))}\n\n"
            return
        rest = list(generation.token_ids[given:])
        if len(generation.text) > len(sent) and generation.text.startswith(sent):
            yield chunk(generation.text[len(sent) :], None, rest)
            rest = []
        await observe(generation)
        yield chunk(None, generation.finish_reason, rest)
        if include_usage:
            kind = "chat.completion.chunk" if chat else "text_completion"
            final: dict[str, Any] = {
                "id": ident,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(generation),
            }
            yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"
    finally:  # done, or the client left (the server closed this generator): stop its work
        if not task.done():
            task.cancel()
