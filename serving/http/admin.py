"""Registry changes over HTTP, for operators (admin key required once keys are configured):
move and remove aliases (promote a version, roll back), add and remove routing examples, set
route descriptions,
review logged routing decisions and label them (the review loop).
Publishing stays with the CLI and the Python API, which have the adapter files at hand."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from switchboard_lora.registry.refs import MAX_VERSION
from switchboard_lora.serving.http.auth import check_admin
from switchboard_lora.serving.http.deps import RegistryDep

MAX_ROW_ID = 2**31 - 1  # what an integer key column holds (32 bits in PostgreSQL)

router = APIRouter(prefix="/v1/admin", dependencies=[Depends(check_admin)], tags=["admin"])


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_VERSION, strict=True)  # 1e23 is not a version


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    route: str = Field(min_length=1, max_length=63)
    source: str = "api"


class DescriptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(min_length=1)


class ExamplesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: list[str] = Field(min_length=1)
    source: str = "api"


@router.put("/adapters/{name}/aliases/{alias}")
async def set_alias(name: str, alias: str, body: AliasBody, registry: RegistryDep) -> Any:
    version = await asyncio.to_thread(registry.set_alias, name, alias, body.version)
    return version.to_json()


@router.delete("/adapters/{name}/aliases/{alias}")
async def remove_alias(name: str, alias: str, registry: RegistryDep) -> dict[str, Any]:
    await asyncio.to_thread(registry.remove_alias, name, alias)
    return {"name": name, "alias": alias, "removed": True}


@router.post("/routes/{route}/examples")
async def add_examples(route: str, body: ExamplesBody, registry: RegistryDep) -> dict[str, Any]:
    added = await asyncio.to_thread(registry.routes.add_examples, route, body.examples, body.source)
    return {"route": route, "added": added}


@router.get("/routes/{route}/examples")
async def list_examples(route: str, registry: RegistryDep) -> dict[str, Any]:
    examples = await asyncio.to_thread(registry.routes.examples, route)
    return {"route": route, "examples": [e.to_json() for e in examples]}


@router.delete("/routes/{route}/examples")
async def remove_examples(
    route: str,
    registry: RegistryDep,
    ids: Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_ROW_ID)]] | None, Query(alias="id")
    ] = None,
) -> dict[str, Any]:
    """Remove the examples named by `?id=…` (repeatable), or all of the route's without."""
    removed = await asyncio.to_thread(registry.routes.remove_examples, route, ids)
    return {"route": route, "removed": removed}


@router.put("/routes/{route}/description")
async def describe_route(route: str, body: DescriptionBody, registry: RegistryDep) -> Any:
    """What the route is for: evidence beside its examples (`switchboard route describe`)."""
    stored = await asyncio.to_thread(registry.routes.describe, route, body.description)
    return {"route": route, "description": stored}


@router.delete("/routes/{route}/description")
async def remove_description(route: str, registry: RegistryDep) -> dict[str, Any]:
    await asyncio.to_thread(registry.routes.describe, route, None)
    return {"route": route, "description": None}


@router.get("/route-decisions")
async def review_decisions(
    registry: RegistryDep,
    uncertain: bool = False,
    since: datetime | None = None,
    labelled: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Logged routing decisions, most uncertain first (`switchboard route review`)."""
    found = await asyncio.to_thread(
        registry.decisions.review,
        uncertain=uncertain,
        since=since,
        labelled=labelled,
        limit=limit,
    )
    return {"decisions": [d.to_json() for d in found]}


@router.post("/route-decisions/{decision_id}/label")
async def label_decision(
    decision_id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)], body: LabelBody, registry: RegistryDep
) -> Any:
    """The route this request should have taken: its text becomes an example of it, live."""
    labelled = await asyncio.to_thread(
        registry.decisions.label, decision_id, body.route, body.source
    )
    return labelled.to_json()
