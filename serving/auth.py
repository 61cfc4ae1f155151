"""API keys: optional in development, enforced once configured.

With no keys configured the API is open. Otherwise every /v1 call needs a client or an admin
key (`Authorization: Bearer KEY`), and calls that change the registry need an admin key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from fastapi import Request

from registry.errors import ErrorCode, SwitchboardError


def _presented(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _holds(token: str | None, keys: Iterable[str]) -> bool:
    # compare_digest on every key: the time taken says nothing about which key was close.
    matches = [secrets.compare_digest(token or "", key) for key in keys]
    return token is not None and any(matches)


def check_key(request: Request) -> None:
    clients: frozenset[str] = request.app.state.client_keys
    admins: frozenset[str] = request.app.state.admin_keys
    if (clients or admins) and not _holds(_presented(request), clients | admins):
        raise SwitchboardError(
            ErrorCode.UNAUTHORIZED, "a valid API key is required: Authorization: Bearer KEY"
        )


def check_admin(request: Request) -> None:
    check_key(request)
    clients: frozenset[str] = request.app.state.client_keys
    admins: frozenset[str] = request.app.state.admin_keys
    if (clients or admins) and not _holds(_presented(request), admins):
        raise SwitchboardError(
            ErrorCode.FORBIDDEN, "changing the registry needs an admin key (SWITCHBOARD_ADMIN_KEYS)"
        )
