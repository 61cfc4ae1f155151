"""The OpenAI-compatible HTTP API: `create_app(settings)` assembles the routes (`openai_api`,
`admin`, `vllm_lora`, `probes`), the limits, the error mapping and the state they share. The
lifespan builds the registry, router and engine once (`build`); tests hand in their own service.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from switchboard_lora.serving.build import build_service
from switchboard_lora.serving.http import admin, openai_api, probes, vllm_lora
from switchboard_lora.serving.http.body_limit import BodyLimit
from switchboard_lora.serving.http.console.pages import install_console
from switchboard_lora.serving.http.docs_pages import install_docs
from switchboard_lora.serving.http.errors import install_error_handlers
from switchboard_lora.serving.http.metrics import Metrics
from switchboard_lora.serving.http.rate_limit import RateLimit, RateLimits
from switchboard_lora.serving.service import Service
from switchboard_lora.serving.settings import ServerSettings


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

    # FastAPI's own documentation routes are off: `install_docs` serves them, behind the keys.
    app = FastAPI(
        title="Switchboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.ready = False
    app.state.metrics = Metrics()
    app.state.client_keys = frozenset(settings.api_keys)
    app.state.admin_keys = frozenset(settings.admin_keys)
    app.state.mix_allow = frozenset(settings.mix_allow)
    keyed = bool(settings.api_keys or settings.admin_keys)
    install_docs(app, behind_keys=keyed and not settings.open_docs)
    for routes in (probes.router, openai_api.router, admin.router, vllm_lora.router):
        app.include_router(routes)
    app.state.console_secret = secrets.token_bytes(32)  # signs the console's form tokens
    app.state.console_checks = {}  # ref -> the console's last verify of it
    install_console(app)
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
    return app
