"""vLLM's API for placing LoRA adapters at run time, `/v1/load_lora_adapter` and
`/v1/unload_lora_adapter`, with vLLM's request and response shapes, over the registry (admin
key required once keys are configured):

- load `{"lora_name": N, "lora_path": P}`: P is an adapter directory on this server's machine,
  published (the usual checks: its shape, its base) as N's next version; or a ref of one of
  N's versions (`N:3`, `N@staging`). Either way `model=N` serves that version from then on (its
  `prod` alias points there). A name already served is refused unless `load_inplace` is true,
  as vLLM refuses it.
- unload `{"lora_name": N}`: N leaves serving (`model=N` is a 404). Its versions are soft
  deleted, their aliases removed first: the history stays (`switchboard list --all`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.refs import AdapterRef, validate_name
from switchboard_lora.serving.http.auth import check_admin
from switchboard_lora.serving.http.deps import ServiceDep
from switchboard_lora.serving.service import Service

router = APIRouter(prefix="/v1", dependencies=[Depends(check_admin)], tags=["admin"])

SERVING_ALIAS = "prod"  # what `model=<name>` serves, when it is set


class LoadBody(BaseModel):
    lora_name: str = Field(min_length=1, max_length=63)
    lora_path: str = Field(min_length=1, max_length=4096)
    load_inplace: bool = False


class UnloadBody(BaseModel):
    lora_name: str = Field(min_length=1, max_length=63)
    lora_int_id: int | None = None  # vLLM's; names are what identify adapters here


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load(body: LoadBody, service: ServiceDep) -> str:
    version = await asyncio.to_thread(_load, service, body)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully ({version.ref})."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload(body: UnloadBody, service: ServiceDep) -> str:
    await asyncio.to_thread(_unload, service, body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


def _live(service: Service, name: str) -> list[VersionInfo]:
    """The name's versions not deleted (none for a name never published)."""
    try:
        return service.registry.list_versions(name)
    except SwitchboardError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return []
        raise


def _load(service: Service, body: LoadBody) -> VersionInfo:
    registry, name = service.registry, validate_name(body.lora_name)
    if _live(service, name) and not body.load_inplace:
        raise SwitchboardError(  # a 400, as vLLM answers it
            ErrorCode.INVALID_INPUT,
            f"the LoRA adapter {name!r} has already been loaded (load_inplace: true replaces it)",
        )
    source = Path(body.lora_path)
    if source.is_dir():
        ref = registry.publish(source, name, service.base).ref
    else:
        try:
            parsed = AdapterRef.parse(body.lora_path)
        except SwitchboardError:
            parsed = None
        pinned = parsed is not None and (parsed.version is not None or parsed.alias is not None)
        if parsed is None or parsed.name != name or not pinned:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"lora_path {body.lora_path!r} is neither an adapter directory on this server "
                f"nor a version of {name} ({name}:3, {name}@staging)",
            )
        ref = body.lora_path
    version = registry.resolve(ref)
    service.adapter(version)  # servable here, its files checked out and verified: now
    return registry.set_alias(name, SERVING_ALIAS, version.version)


def _unload(service: Service, name: str) -> None:
    registry = service.registry
    versions = _live(service, validate_name(name))
    if not versions:
        raise SwitchboardError(ErrorCode.NOT_FOUND, f"the LoRA adapter {name!r} cannot be found")
    for version in versions:
        for alias in version.aliases:
            registry.remove_alias(name, alias)
    for version in versions:
        registry.delete(version.ref)
