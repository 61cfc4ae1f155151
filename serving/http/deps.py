"""What routes depend on, as typed aliases: the service once the engine is up, the registry,
the key check. Routes of every module (the app, the admin API) take them from here."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.store import Registry
from switchboard_lora.serving.http.auth import check_key
from switchboard_lora.serving.service import Service

STARTING = "the server is starting"


async def get_service(request: Request) -> Service:
    # async though it never waits: FastAPI would run a sync dependency in a thread.
    if not request.app.state.ready:  # a 503: come back later (not a 429 rate limit)
        raise SwitchboardError(ErrorCode.UNAVAILABLE, STARTING)
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


KeyDep = [Depends(check_key)]


async def get_registry(request: Request) -> Registry:
    return (await get_service(request)).registry


RegistryDep = Annotated[Registry, Depends(get_registry)]
