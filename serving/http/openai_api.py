"""The OpenAI-compatible routes: models, chat completions, completions, feedback.

Routes are thin: they parse, call the service, and shape the answer (`openai_format`,
`streaming`). Every answer says what served it: a `switchboard` field in the body and an
`x-switchboard-route` header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.refs import AdapterRef
from switchboard_lora.serving.engines.interface import Generation
from switchboard_lora.serving.http.auth import check_mix, client_id, is_admin
from switchboard_lora.serving.http.deps import KeyDep, ServiceDep
from switchboard_lora.serving.http.metrics import Metrics
from switchboard_lora.serving.http.openai_format import (
    Reply,
    completion_body,
    header_value,
    model_list,
    usage,
)
from switchboard_lora.serving.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
)
from switchboard_lora.serving.http.streaming import stream
from switchboard_lora.serving.served import Served
from switchboard_lora.serving.service import Prompt, Service

T = TypeVar("T")

router = APIRouter(prefix="/v1", dependencies=KeyDep, tags=["openai"])

Body = ChatCompletionRequest | CompletionRequest


@router.get("/models")
async def models(service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": model_list(service)}


@router.get("/models/{model_id:path}")
async def model(model_id: str, service: ServiceDep) -> dict[str, Any]:
    """One entry of the list (`client.models.retrieve`); ids hold ':' and '@'."""
    for entry in model_list(service):
        if entry["id"] == model_id:
            return entry
    raise SwitchboardError(ErrorCode.NOT_FOUND, f"the model {model_id!r} does not exist")


@router.post("/chat/completions")
async def chat(body: ChatCompletionRequest, service: ServiceDep, request: Request) -> Response:
    messages = [m.model_dump() for m in body.messages]
    limit = body.token_limit or max(1, min(512, service.engine.max_model_len // 4))
    return await _answer(request, service, body, [messages], limit)


@router.post("/completions")
async def completions(body: CompletionRequest, service: ServiceDep, request: Request) -> Response:
    prompts: list[Prompt] = list(body.prompts)
    return await _answer(request, service, body, prompts, body.token_limit)


@router.post("/feedback")
async def feedback(body: FeedbackRequest, service: ServiceDep, request: Request) -> dict[str, Any]:
    """Feedback on a response, from the key it was served to (or an admin key)."""
    experiment = await asyncio.to_thread(
        service.registry.experiments.feedback,
        body.id,
        thumbs_up=None if body.thumbs is None else body.thumbs == "up",
        score=body.score,
        label=body.label,
        client=client_id(request),
        admin=is_admin(request),
    )
    return {"id": body.id, "experiment": experiment, "recorded": True}


def _mix_of(body: Body, request: Request) -> list[tuple[str, float]]:
    parts = [(p.ref, p.weight) for p in body.switchboard.mix] if body.switchboard else []
    if parts:
        allowed: frozenset[str] = request.app.state.mix_allow
        check_mix(request, [AdapterRef.parse(ref).name for ref, _ in parts], allowed)
    return parts


async def _answer(
    request: Request,
    service: Service,
    body: Body,
    prompts: list[Prompt],
    max_tokens: int,
) -> Response:
    served, generation_requests = await asyncio.to_thread(  # one trip off the event loop
        service.admit,
        body.model,
        prompts,
        _mix_of(body, request),
        request.headers,
        body.sampling(max_tokens),
        body.n,
    )
    echo = isinstance(body, CompletionRequest) and bool(body.echo)
    reply = Reply(
        chat=isinstance(body, ChatCompletionRequest),
        model=body.model,
        served=served,
        token_ids=bool(body.return_token_ids),
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        n=body.n,
        echoed=tuple(r.prompt for r in generation_requests[:: body.n]) if echo else (),
        top_logprobs=body.logprob_count or 0,
        prompt_logprobs=body.prompt_logprobs,
        tokens_as_ids=bool(body.return_tokens_as_token_ids),
    )
    watch = _Watch(request, service, served, reply)
    headers = header_value(served)
    if body.stream:  # one prompt, one sample (the schema refuses more)
        events = stream(service, generation_requests[0], reply, watch)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    work = asyncio.gather(*(service.generate(r) for r in generation_requests))
    try:
        generations = await _unless_disconnected(request, work)
    except Exception:
        watch.failed()
        raise
    if generations is None:  # nobody is waiting for an answer
        return Response(status_code=499)
    await watch.finished(_whole(generations, body.n))
    tokens = service.engine.tokens
    return JSONResponse(completion_body(reply, generations, tokens), headers=headers)


class _Watch:
    """One accepted request's metrics; the exposure record of an answer an arm served."""

    def __init__(self, request: Request, service: Service, served: Served, reply: Reply) -> None:
        self.request, self.service, self.served, self.reply = request, service, served, reply
        self.metrics: Metrics = request.app.state.metrics
        self.began = time.perf_counter()

    def started(self) -> None:
        self.metrics.started(self.served, time.perf_counter() - self.began)

    def failed(self) -> None:
        self.metrics.failed(self.served)

    async def finished(self, generation: Generation) -> None:
        seconds = time.perf_counter() - self.began
        self.metrics.observe(self.served, seconds, generation)
        if self.served.arm is not None:  # a trip to the database only for what an arm served
            who = client_id(self.request)
            await asyncio.to_thread(
                self.service.arms.expose, self.reply.ident, self.served, seconds, generation, who
            )


def _whole(generations: list[Generation], n: int) -> Generation:
    """One request's generations as one, for its metrics and exposure: each prompt's tokens
    once, every choice's answer."""
    if len(generations) == 1:
        return generations[0]
    first = generations[0]
    made = tuple(t for g in generations for t in g.token_ids)
    prompt_tokens = usage(generations, n)["prompt_tokens"]
    return Generation(first.text, made, prompt_tokens, first.finish_reason)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result; or None, with `work` cancelled (its generations stopped), as soon as
    the client disconnects. The body has been read: the next message is the disconnect."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None
