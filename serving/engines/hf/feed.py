"""What a decoding loop takes its requests from and gives its answers to.

The transformers engine decodes continuously: between two steps it takes new requests (up to
the room left in its batch), and answers each request the moment its row ends. A `Feed` is
that loop's other side: the server's `Batcher` (requests from the event loop; the tests'
support has one over a fixed list). Requests are named by the key the feed gave them.
"""

from __future__ import annotations

from typing import Protocol

from switchboard_lora.serving.engines.interface import Generation, GenerationRequest


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
