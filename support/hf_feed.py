"""The transformers engine driven without a server: a fixed list of requests fed to its
decoding loop, as if they all came at once (the server's feed is the `Batcher`)."""

from __future__ import annotations

from collections.abc import Callable

from switchboard_lora.serving.engines.hf.engine import HFEngine
from switchboard_lora.serving.engines.interface import Generation, GenerationRequest


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


def generate(
    engine: HFEngine,
    requests: list[GenerationRequest],
    on_token: Callable[[int, int], None] | None = None,
    cancelled: Callable[[int], bool] | None = None,
) -> list[Generation | Exception]:
    """Generate for a list of requests, as the server would if they came at once.

    `on_token(i, token_id)` is called for each new token of request `i` as it is made
    (up to its own max_tokens, never past its end of sequence). `cancelled(i)` says request
    `i`'s client has left: its row ends at the next step. A request that fails (its adapter
    cannot be loaded, its prompt does not fit) gets its error in its place; the others are
    answered.
    """
    feed = ListFeed(requests, on_token, cancelled)
    engine.serve(feed)
    assert all(r is not None for r in feed.results)
    return feed.results  # type: ignore[return-value]
