"""Who may use the console, and proof that a change came from the console's own page.

Open while the API is open. Once keys are configured every page and action needs an admin
key: a login form puts it in a cookie (`HttpOnly`, `SameSite=Strict`, only sent to /console),
or a script presents it as `Authorization: Bearer KEY`. Every state-changing request carries a
token derived from the session (a form field or the `X-CSRF-Token` header) and, where the
browser says so, comes from this origin: a page elsewhere cannot forge one.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

from fastapi import Request

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.http.auth import configured_keys, holds, presented_key

COOKIE = "switchboard_console"
PREFIX = "/console"


class LoginNeeded(Exception):
    """No admin key came with a console request (pages answer with the login form)."""


def _presented(request: Request) -> str | None:
    return presented_key(request) or request.cookies.get(COOKIE)


def check_login(key: str, request: Request) -> None:
    """A key given to the login form: an admin key, or a clear refusal."""
    clients, admins = configured_keys(request)
    if holds(key, admins):
        return
    if holds(key, clients):
        raise SwitchboardError(
            ErrorCode.FORBIDDEN, "the console needs an admin key, not a client key"
        )
    raise SwitchboardError(ErrorCode.UNAUTHORIZED, "that is not a key this server knows")


async def console_user(request: Request) -> str:
    """The session's identity for the CSRF token: the admin key, or "" while the API is open."""
    clients, admins = configured_keys(request)
    if not (clients or admins):
        return ""
    key = _presented(request)
    if key is None:
        raise LoginNeeded
    check_login(key, request)
    return key


def csrf_token(request: Request, user: str) -> str:
    secret: bytes = request.app.state.console_secret
    return hmac.new(secret, f"csrf:{user}".encode(), hashlib.sha256).hexdigest()[:40]


def same_origin(request: Request) -> None:
    """Refuse what the browser says came from another site (Fetch metadata, then Origin)."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    foreign_site = site is not None and site not in ("same-origin", "none")
    if foreign_site or (origin is not None and origin != own):  # "null" too
        raise SwitchboardError(ErrorCode.FORBIDDEN, "a console change must come from its own page")


async def form_of(request: Request) -> dict[str, list[str]]:
    """The urlencoded form a page posted (values in order, repeated names kept)."""
    body = (await request.body()).decode("utf-8", "replace")
    return parse_qs(body, keep_blank_values=True)


async def checked_form(request: Request, user: str) -> dict[str, list[str]]:
    """A state-changing request's form, once it has proved it came from the console."""
    same_origin(request)
    form = await form_of(request)
    token = request.headers.get("x-csrf-token") or (form.get("csrf") or [""])[0]
    if not hmac.compare_digest(token.encode(), csrf_token(request, user).encode()):
        raise SwitchboardError(
            ErrorCode.FORBIDDEN, "the console's form token is missing or stale: reload the page"
        )
    return form
