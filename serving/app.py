"""The OpenAI-compatible HTTP API: `create_app(settings)`.

Routes are thin: they parse, call the service, and shape the answer. The lifespan builds the
registry, router and engine once; tests hand in their own through the keyword
arguments. Every answer says what served it: a `switchboard` field in the body and an
`x-switchboard-route` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from registry.errors import ErrorCode, SwitchboardError
from registry.settings import Settings
from registry.store import VersionInfo
from serving import admin
from serving.auth import check_key
from serving.engine import Engine, Generation, SamplingParams
from serving.metrics import Metrics
from serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from serving.service import Served, Service, unservable

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-switchboard-route"
# One mapping from error codes to HTTP statuses, here at the edge.
STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.INTEGRITY: 422,
    ErrorCode.CAPACITY: 429,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
}
_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape, so clients (the `openai` package) raise the right error."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
    )


def get_service(request: Request) -> Service:
    if not request.app.state.ready:
        raise SwitchboardError(ErrorCode.CAPACITY, "the server is starting")
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


KeyDep = [Depends(check_key)]


def create_app(settings: Settings, *, service: Service | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = service if service is not None else await asyncio.to_thread(build_service, settings)
        await built.engine.start()
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

    @app.exception_handler(SwitchboardError)
    async def switchboard_error(_: Request, exc: SwitchboardError) -> JSONResponse:
        return error_body(STATUS.get(exc.code, 400), exc.message, exc.code.value)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        message = str(first["msg"])
        return error_body(
            400,
            f"{where}: {message}" if where else message,
            "invalid_input",
            where or None,
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ready = bool(request.app.state.ready)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = request.app.state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", dependencies=KeyDep)
    async def models(service: ServiceDep) -> dict[str, Any]:
        return {"object": "list", "data": model_list(service)}

    @app.post("/v1/chat/completions", dependencies=KeyDep)
    async def chat(body: ChatCompletionRequest, service: ServiceDep, request: Request) -> Response:
        messages = [m.model_dump() for m in body.messages]
        served = await asyncio.to_thread(
            service.resolve, body.model, messages, _mix(body), request.headers
        )
        limit = body.token_limit or max(1, min(512, service.engine.max_model_len // 4))
        prompt = service.engine.tokens.render_chat(messages)
        return await _respond(request, service, body, served, prompt, limit, chat=True)

    @app.post("/v1/completions", dependencies=KeyDep)
    async def completions(
        body: CompletionRequest, service: ServiceDep, request: Request
    ) -> Response:
        served = await asyncio.to_thread(
            service.resolve, body.model, body.prompt, _mix(body), request.headers
        )
        return await _respond(
            request, service, body, served, body.prompt, body.token_limit, chat=False
        )

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


def _mix(body: ChatCompletionRequest | CompletionRequest) -> list[tuple[str, float]]:
    return [(p.ref, p.weight) for p in body.switchboard.mix] if body.switchboard else []


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


async def _respond(
    request: Request,
    service: Service,
    body: ChatCompletionRequest | CompletionRequest,
    served: Served,
    prompt: str,
    max_tokens: int,
    *,
    chat: bool,
) -> Response:
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops,
        seed=body.seed,
    )
    generation_request = await asyncio.to_thread(service.prepare, prompt, served.version, params)
    metrics: Metrics = request.app.state.metrics
    header = {ROUTE_HEADER: json.dumps(_route_header(served), separators=(",", ":"))}
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    started = time.perf_counter()
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        stream = _stream(
            service, generation_request, served, body.model, ident, chat, metrics, started, usage
        )
        return StreamingResponse(stream, media_type="text/event-stream", headers=header)
    generation = await service.generate(generation_request)
    await _observe(service, metrics, served, ident, time.perf_counter() - started, generation)
    return JSONResponse(_body(ident, body.model, served, generation, chat), headers=header)


async def _observe(
    service: Service,
    metrics: Metrics,
    served: Served,
    ident: str,
    seconds: float,
    generation: Generation,
) -> None:
    """Metrics for every answer; a durable record for answers served by an experiment's arm
    (what feedback is tied to)."""
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


def _route_header(served: Served) -> dict[str, Any]:
    data = served.to_json()
    keys = ("decision", "served", "adapters", "scores", "experiment")
    return {key: data[key] for key in keys if key in data}


def _usage(generation: Generation) -> dict[str, int]:
    done = len(generation.token_ids)
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": done,
        "total_tokens": generation.prompt_tokens + done,
    }


def _body(
    ident: str, model: str, served: Served, generation: Generation, chat: bool
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": generation.finish_reason,
        "logprobs": None,
    }
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
        "usage": _usage(generation),
        "switchboard": served.to_json(),
    }


async def _stream(
    service: Service,
    generation_request: Any,
    served: Served,
    model: str,
    ident: str,
    chat: bool,
    metrics: Metrics,
    started: float,
    usage: bool,
) -> AsyncIterator[str]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(service.generate(generation_request, queue.put_nowait))
    tokens: list[int] = []
    sent = ""
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        payload: dict[str, Any] = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if first:
            payload["switchboard"] = served.to_json()
        return f"data: {json.dumps(payload)}\n\n"

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
            yield chunk(text[len(sent) :], None)
            sent = text
    generation = await task
    if len(generation.text) > len(sent) and generation.text.startswith(sent):
        yield chunk(generation.text[len(sent) :], None)
    await _observe(service, metrics, served, ident, time.perf_counter() - started, generation)
    yield chunk(None, generation.finish_reason)
    if usage:
        final = {"id": ident, "object": kind, "created": created, "model": model, "choices": []}
        yield f"data: {json.dumps(final | {'usage': _usage(generation)})}\n\n"
    yield "data: [DONE]\n\n"


def build_service(settings: Settings) -> Service:
    """Registry, router (over the adapters of the served base that the engine can serve)
    and the engine that `settings.engine` names."""
    from registry.bases import BaseModels
    from registry.store import Registry
    from router.router import RegistryRoutes, build_router

    registry = Registry(settings.registry_url, settings.home_dir)
    base = BaseModels(settings.home_dir / "bases").get(settings.base)
    engine = build_engine(settings, base.path)

    def servable(version: VersionInfo) -> bool:
        return unservable(version, base, engine) is None

    router = build_router(settings, RegistryRoutes(registry, accept=servable))
    return Service(registry, router, engine, base)


def build_engine(settings: Settings, base_dir: Path) -> Engine:
    """`auto` takes vLLM where it is installed and supports the base, else transformers."""
    from serving.hf_engine import HFEngine
    from serving.vllm_engine import VLLMEngine, VLLMOptions, vllm_supports

    choice = settings.engine
    if choice in ("auto", "vllm"):
        reason = vllm_supports(base_dir)
        if reason is None:
            choice = "vllm"
        elif choice == "vllm":
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"--engine vllm: {reason}")
        else:
            log.info("engine auto: transformers+PEFT (%s)", reason)
            choice = "hf"
    if choice == "vllm":
        options = VLLMOptions(
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
        return VLLMEngine(base_dir, options)
    return HFEngine(
        base_dir,
        max_adapters=settings.max_loras,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
    )
