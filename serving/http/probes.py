"""What operators and orchestrators poll, never behind a key: liveness, readiness (with the
reason when not ready, and which engine serves, where and why) and Prometheus metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from switchboard_lora.serving.http.deps import STARTING

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
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


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
