"""API keys: optional in development, enforced once configured.

With no keys configured the API is open. Otherwise every /v1 call needs a client or an admin
key (`Authorization: Bearer KEY`), and calls that change the registry need an admin key.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from fastapi import Request

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError


def presented_key(request: Request) -> str | None:
    """The key in `Authorization: Bearer KEY`, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def configured_keys(request: Request) -> tuple[frozenset[str], frozenset[str]]:
    """(client keys, admin keys) as configured; both empty: the API is open."""
    return request.app.state.client_keys, request.app.state.admin_keys


def holds(token: str | None, keys: Iterable[str]) -> bool:
    # compare_digest on every key: the time taken says nothing about which key was close.
    # As bytes: it refuses non-ASCII str, and a header may carry any (Latin-1) character.
    presented = (token or "").encode("utf-8", "surrogateescape")
    matches = [secrets.compare_digest(presented, key.encode()) for key in keys]
    return token is not None and any(matches)


async def check_key(request: Request) -> None:
    # Dependencies are async, though they never wait: FastAPI runs a sync one in a thread.
    clients, admins = configured_keys(request)
    if (clients or admins) and not holds(presented_key(request), clients | admins):
        raise SwitchboardError(
            ErrorCode.UNAUTHORIZED, "a valid API key is required: Authorization: Bearer KEY"
        )


def is_admin(request: Request) -> bool:
    clients, admins = configured_keys(request)
    return not (clients or admins) or holds(presented_key(request), admins)


def client_id(request: Request) -> str | None:
    """Who is asking, as the registry may store it: the presented key's sha256 (never the
    key itself); None while no keys are configured (everyone is everyone)."""
    clients, admins = configured_keys(request)
    token = presented_key(request)
    if not (clients or admins) or token is None:
        return None
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_mix(request: Request, names: Iterable[str], allowed: frozenset[str]) -> None:
    """A client-chosen mix publishes a derived version: admins may ask for any, client keys
    only for adapters on the allow-list (`*`: all)."""
    if is_admin(request) or "*" in allowed:
        return
    refused = sorted(set(names) - allowed)
    if refused:
        raise SwitchboardError(
            ErrorCode.FORBIDDEN,
            f"mixing {', '.join(refused)} needs an admin key or the adapter on the server's "
            "mix allow-list (SWITCHBOARD_MIX_ALLOW)",
        )


async def check_admin(request: Request) -> None:
    await check_key(request)
    if not is_admin(request):
        raise SwitchboardError(
            ErrorCode.FORBIDDEN, "changing the registry needs an admin key (SWITCHBOARD_ADMIN_KEYS)"
        )
