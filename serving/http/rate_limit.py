"""Per-client rate limits, before any work: a token bucket per API key (or per client
address where no keys are configured), refilled at `per_minute / 60` a second and holding up
to `per_minute`.

An ASGI middleware in front of everything else, so that a client flooding the server with
junk (malformed JSON, 10 MB bodies) is counted too, and refused (429, with Retry-After)
before its body is read or parsed. A key that is not one of the server's counts as its
address: inventing keys buys nothing. In memory, per server process: with N replicas a
client gets up to N times the rate, which bounds what one client can take from each replica
(the purpose), not a global quota.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from switchboard_lora.serving.http.errors import error_body

_MAX_CLIENTS = 100_000  # buckets remembered; the least recently seen are forgotten (full)


class RateLimit:
    def __init__(self, per_minute: float, what: str) -> None:
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.what = what
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # level, time
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Count one request of `client`: 0 if taken, else the seconds until one would be."""
        now = time.monotonic()
        with self._lock:
            level, then = self._buckets.pop(client, (self.capacity, now))
            level = min(self.capacity, level + (now - then) * self.rate)
            taken = level >= 1.0
            self._buckets[client] = (level - 1.0 if taken else level, now)
            while len(self._buckets) > _MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return 0.0 if taken else (1.0 - level) / self.rate


class RateLimits:
    """Applies `limits` (by request path, POST only) to every client before the app runs."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, RateLimit], keys: frozenset[str]) -> None:
        self.app = app
        self.limits = limits
        self.keys = {hashlib.sha256(k.encode()).hexdigest() for k in keys}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        wait = limit.take(self._client(scope))
        if not wait:
            await self.app(scope, receive, send)
            return
        message = (
            f"rate limit of {limit.capacity:g} {limit.what} a minute reached; "
            f"try again in {wait:.1f}s"
        )
        response = error_body(429, message, "rate_limited")
        response.headers["retry-after"] = str(math.ceil(wait))
        await response(scope, receive, send)

    def _client(self, scope: Scope) -> str:
        """The key presented, if it is one of the server's; else the client's address."""
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            digest = hashlib.sha256(token.strip()).hexdigest()
            if digest in self.keys:
                return "key:" + digest
        client = scope.get("client")
        return "addr:" + (client[0] if client else "?")
