"""Streaming answers as server-sent events: tokens as they come, never half a character or
the start of a stop string, then the finish reason, usage on request, and [DONE].

With `return_token_ids` (vLLM's extension, which a gateway in front of this server asks for)
each chunk also carries the ids of the tokens it completes; together they are the answer's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Protocol

from switchboard_lora.serving.engines.interface import Generation, GenerationRequest
from switchboard_lora.serving.http.errors import error_event
from switchboard_lora.serving.http.openai_format import Reply, stream_chunk, usage_chunk
from switchboard_lora.serving.service import Service


class Watch(Protocol):
    """What a request's metrics and exposure record hear of it."""

    def started(self) -> None: ...  # the first token came

    def failed(self) -> None: ...

    async def finished(self, generation: Generation) -> None: ...


async def stream(
    service: Service, generation_request: GenerationRequest, reply: Reply, watch: Watch
) -> AsyncIterator[str]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(service.generate(generation_request, queue.put_nowait))
    try:
        yield stream_chunk(reply, None, None, first=True)
        async for chunk in _chunks(service, generation_request, reply, task, queue, watch):
            yield chunk
    except Exception as exc:  # headers are sent: the error goes in the stream, as OpenAI's
        watch.failed()
        yield f"data: {json.dumps(error_event(exc))}\n\n"
        return
    finally:  # done, or the client left (the server closed this generator): stop its work
        if not task.done():
            task.cancel()


async def _chunks(
    service: Service,
    generation_request: GenerationRequest,
    reply: Reply,
    task: asyncio.Future[Generation],
    queue: asyncio.Queue[int],
    watch: Watch,
) -> AsyncIterator[str]:
    """The stream after its first chunk: text as it is decoded, then its end."""
    tokens: list[int] = []
    sent = ""
    given = 0  # how many of the tokens' ids chunks have carried
    stops = generation_request.params.stop
    while not (task.done() and queue.empty()):
        try:
            tokens.append(await asyncio.wait_for(queue.get(), timeout=0.05))
        except TimeoutError:
            continue
        if len(tokens) == 1:
            watch.started()
        text = service.engine.tokens.decode(tokens)
        if text.endswith("\ufffd"):
            continue  # half of a multi-byte character: wait for the rest
        if any(s in text for s in stops):
            continue  # the final text (cut at the stop) is sent below
        if stops:  # hold back what may be the start of a stop string
            hold = max((len(s) - 1 for s in stops), default=0)
            text = text[: max(len(sent), len(text) - hold)]
        if len(text) > len(sent):
            yield stream_chunk(reply, text[len(sent) :], None, token_ids=tokens[given:])
            sent, given = text, len(tokens)
    generation = await task
    rest = list(generation.token_ids[given:])
    if len(generation.text) > len(sent) and generation.text.startswith(sent):
        yield stream_chunk(reply, generation.text[len(sent) :], None, token_ids=rest)
        rest = []
    await watch.finished(generation)
    yield stream_chunk(reply, None, generation.finish_reason, token_ids=rest)
    if reply.include_usage:
        yield usage_chunk(reply, generation)
    yield "data: [DONE]\n\n"
