"""What a decoding loop takes its requests from and gives its answers to.

The transformers engine decodes continuously: between two steps it takes new requests (up to
the room left in its batch), and answers each request the moment its row ends. A `Feed` is
that loop's other side: the server's `Batcher` (requests from the event loop), or a
`ListFeed` over a fixed list (tests, benchmarks, anything without an event loop). Requests
are named by the key the feed gave them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from serving.engine import Generation, GenerationRequest


class Feed(Protocol):
    def take(self, limit: int) -> list[tuple[int, GenerationRequest]]:
        """Up to `limit` waiting requests, each with its key; none waiting: []."""
        ...

    def token(self, key: int, token_id: int) -> None:
        """A new token of a request, as it is made (streaming hooks in here)."""
        ...

    def left(self, key: int) -> bool:
        """Whether the request's client has gone (its row ends at the next step)."""
        ...

    def finish(self, key: int, result: Generation | Exception) -> None:
        """A request's answer, or its own error; given once per key taken."""
        ...


class ListFeed:
    """A fixed list of requests; keys are their indices, `results` their answers."""

    def __init__(
        self,
        requests: list[GenerationRequest],
        on_token: Callable[[int, int], None] | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> None:
        self.requests = requests
        self.on_token = on_token
        self.cancelled = cancelled
        self.results: list[Generation | Exception | None] = [None] * len(requests)
        self._next = 0

    def take(self, limit: int) -> list[tuple[int, GenerationRequest]]:
        start, self._next = self._next, min(len(self.requests), self._next + limit)
        return [(i, self.requests[i]) for i in range(start, self._next)]

    def token(self, key: int, token_id: int) -> None:
        if self.on_token is not None:
            self.on_token(key, token_id)

    def left(self, key: int) -> bool:
        return self.cancelled is not None and self.cancelled(key)

    def finish(self, key: int, result: Generation | Exception) -> None:
        self.results[key] = result
