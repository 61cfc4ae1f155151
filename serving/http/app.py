"""The OpenAI-compatible HTTP API: `create_app(settings)`.

Routes are thin: they parse, call the service, and shape the answer (`openai_format`,
`streaming`). The lifespan builds the registry, router and engine once (`build`); tests hand
in their own service. Every answer says what served it: a `switchboard` field in the body and
an `x-switchboard-route` header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from switchboard_lora.registry.refs import AdapterRef
from switchboard_lora.serving.build import build_service
from switchboard_lora.serving.engines.interface import Generation, GenerationRequest, SamplingParams
from switchboard_lora.serving.http import admin
from switchboard_lora.serving.http.auth import check_mix
from switchboard_lora.serving.http.body_limit import BodyLimit
from switchboard_lora.serving.http.deps import STARTING, KeyDep, ServiceDep
from switchboard_lora.serving.http.errors import install_error_handlers
from switchboard_lora.serving.http.metrics import Metrics
from switchboard_lora.serving.http.openai_format import completion_body, header_value, model_list
from switchboard_lora.serving.http.rate_limit import RateLimit, RateLimits
from switchboard_lora.serving.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
)
from switchboard_lora.serving.http.streaming import stream
from switchboard_lora.serving.service import Served, Service
from switchboard_lora.serving.settings import ServerSettings

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, *, service: Service | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = service if service is not None else await asyncio.to_thread(build_service, settings)
        await built.engine.start()
        for collector in built.engine.collectors():
            app.state.metrics.watch(collector)
        app.state.service = built
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await built.engine.stop()

    app = FastAPI(title="Switchboard", lifespan=lifespan)
    app.state.ready = False
    app.state.metrics = Metrics()
    app.state.client_keys = frozenset(settings.api_keys)
    app.state.admin_keys = frozenset(settings.admin_keys)
    app.include_router(admin.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    limits: dict[str, RateLimit] = {}  # by path
    if settings.requests_per_minute:
        generation = RateLimit(settings.requests_per_minute, "requests")
        limits |= {"/v1/chat/completions": generation, "/v1/completions": generation}
    if settings.feedback_per_minute:
        limits["/v1/feedback"] = RateLimit(settings.feedback_per_minute, "feedback posts")
    keys = app.state.client_keys | app.state.admin_keys
    app.add_middleware(RateLimits, limits=limits, keys=keys)  # outermost: before the body
    install_error_handlers(app)
    mix_allow = frozenset(settings.mix_allow)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        if not request.app.state.ready:  # no service yet
            return JSONResponse({"ready": False, "reason": STARTING}, status_code=503)
        engine = request.app.state.service.engine
        body: dict[str, Any] = {"ready": engine.ready}
        if not engine.ready:
            body["reason"] = engine.unready_reason or "the engine is not ready"
        if engine.choice is not None:  # which engine serves, where, and why
            body["engine"] = dataclasses.asdict(engine.choice)
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = request.app.state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", dependencies=KeyDep)
    async def models(service: ServiceDep) -> dict[str, Any]:
        return {"object": "list", "data": model_list(service)}

    def mix_of(
        body: ChatCompletionRequest | CompletionRequest, request: Request
    ) -> list[tuple[str, float]]:
        parts = [(p.ref, p.weight) for p in body.switchboard.mix] if body.switchboard else []
        if parts:
            check_mix(request, [AdapterRef.parse(ref).name for ref, _ in parts], mix_allow)
        return parts

    @app.post("/v1/chat/completions", dependencies=KeyDep)
    async def chat(body: ChatCompletionRequest, service: ServiceDep, request: Request) -> Response:
        messages = [m.model_dump() for m in body.messages]
        limit = body.token_limit or max(1, min(512, service.engine.max_model_len // 4))
        served, generation = await asyncio.to_thread(  # one trip off the event loop
            service.admit,
            body.model,
            messages,
            mix_of(body, request),
            request.headers,
            _sampling(body, limit),
        )
        return await _respond(request, service, body, served, generation, chat=True)

    @app.post("/v1/completions", dependencies=KeyDep)
    async def completions(
        body: CompletionRequest, service: ServiceDep, request: Request
    ) -> Response:
        served, generation = await asyncio.to_thread(
            service.admit,
            body.model,
            body.prompt,
            mix_of(body, request),
            request.headers,
            _sampling(body, body.token_limit),
        )
        return await _respond(request, service, body, served, generation, chat=False)

    @app.post("/v1/feedback", dependencies=KeyDep)
    async def feedback(body: FeedbackRequest, service: ServiceDep) -> dict[str, Any]:
        experiment = await asyncio.to_thread(
            service.registry.experiments.feedback,
            body.id,
            thumbs_up=None if body.thumbs is None else body.thumbs == "up",
            score=body.score,
            label=body.label,
        )
        return {"id": body.id, "experiment": experiment, "recorded": True}

    return app


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops,
        seed=body.seed,
        logprobs=body.logprob_count,
    )


async def _respond(
    request: Request,
    service: Service,
    body: ChatCompletionRequest | CompletionRequest,
    served: Served,
    generation_request: GenerationRequest,
    *,
    chat: bool,
) -> Response:
    metrics: Metrics = request.app.state.metrics
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    started = time.perf_counter()

    async def observe(generation: Generation) -> None:
        """Metrics for every answer; a durable record for answers served by an experiment's
        arm (what feedback is tied to)."""
        seconds = time.perf_counter() - started
        metrics.observe(served, seconds, generation)
        if served.experiment is not None and served.arm is not None:
            await asyncio.to_thread(
                service.registry.experiments.record,
                ident,
                served.experiment,
                served.arm,
                seconds,
                generation.prompt_tokens,
                len(generation.token_ids),
            )

    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        events = stream(
            service,
            generation_request,
            served,
            body.model,
            ident,
            chat,
            observe,
            include_usage=usage,
            token_ids=body.return_token_ids,
        )
        return StreamingResponse(
            events, media_type="text/event-stream", headers=header_value(served)
        )
    generation = await _unless_disconnected(request, service.generate(generation_request))
    if generation is None:  # nobody is waiting for an answer
        return Response(status_code=499)
    await observe(generation)
    return JSONResponse(
        completion_body(
            ident,
            body.model,
            served,
            generation,
            chat,
            service.engine.tokens,
            body.return_token_ids,
        ),
        headers=header_value(served),
    )


async def _unless_disconnected(request: Request, work: Awaitable[Generation]) -> Generation | None:
    """`work`'s result; or None, with `work` cancelled (its generation stopped), as soon as the
    client disconnects. The body has been read: the next message is the disconnect."""

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
