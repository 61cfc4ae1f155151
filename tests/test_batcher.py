"""The request batcher in front of the transformers engine: what is batched together, what a
client that left costs, and where an engine error goes. The engine side is a fake that
records its calls (the batcher is what is under test)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from serving.batcher import Batcher
from serving.engine import Generation, GenerationRequest


class FakeEngine:
    """Answers each prompt upper-cased, streams one token per row; can hold or fail a batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold: threading.Event | None = None
        self.started = threading.Event()
        self.fail_next = False
        self.seen_cancelled: list[bool] = []

    def generate(
        self,
        requests: list[GenerationRequest],
        on_token: Callable[[int, int], None],
        cancelled: Callable[[int], bool],
    ) -> list[Generation | Exception]:
        self.batches.append([r.prompt for r in requests])
        self.started.set()
        if self.hold is not None:
            self.hold.wait(timeout=10)
        self.seen_cancelled = [cancelled(i) for i in range(len(requests))]
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the engine broke")
        for row in range(len(requests)):
            on_token(row, 100 + row)
        return [
            ValueError(f"bad {r.prompt}")
            if r.prompt.startswith("bad")
            else Generation(r.prompt.upper(), (1,), 1, "stop")
            for r in requests
        ]


def _request(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt)


async def _with_batcher(engine: FakeEngine, body: Callable[[Batcher], object], **kw: float) -> None:
    batcher = Batcher(engine.generate, **kw)  # type: ignore[arg-type]
    await batcher.start()
    try:
        await body(batcher)  # type: ignore[misc]
    finally:
        await batcher.stop()


def test_requests_within_the_window_share_one_batch_and_get_their_own_tokens() -> None:
    engine = FakeEngine()
    tokens: dict[str, list[int]] = {p: [] for p in ("a", "b", "c")}

    async def body(batcher: Batcher) -> None:
        answers = await asyncio.gather(
            *(batcher.submit(_request(p), tokens[p].append) for p in ("a", "b", "c"))
        )
        assert [g.text for g in answers] == ["A", "B", "C"]
        await asyncio.sleep(0)  # token callbacks run on the loop, soon after

    asyncio.run(_with_batcher(engine, body, window_s=0.2))
    assert engine.batches == [["a", "b", "c"]]
    assert tokens == {"a": [100], "b": [101], "c": [102]}


def test_a_batch_holds_at_most_max_batch_requests() -> None:
    engine = FakeEngine()

    async def body(batcher: Batcher) -> None:
        answers = await asyncio.gather(*(batcher.submit(_request(p)) for p in "abcde"))
        assert [g.text for g in answers] == list("ABCDE")

    asyncio.run(_with_batcher(engine, body, max_batch=2, window_s=0.2))
    assert [len(b) for b in engine.batches] == [2, 2, 1]
    assert sorted(p for b in engine.batches for p in b) == list("abcde")


def test_a_client_that_left_while_queued_is_never_run() -> None:
    engine = FakeEngine()
    engine.hold = threading.Event()

    async def body(batcher: Batcher) -> None:
        first = asyncio.create_task(batcher.submit(_request("first")))
        await asyncio.to_thread(engine.started.wait, 10)  # the engine is busy with it
        gone = asyncio.create_task(batcher.submit(_request("gone")))
        stays = asyncio.create_task(batcher.submit(_request("stays")))
        await asyncio.sleep(0.05)
        gone.cancel()  # the client disconnected while its request waited
        await asyncio.sleep(0.05)
        engine.hold.set()  # type: ignore[union-attr]
        assert (await first).text == "FIRST"
        assert (await stays).text == "STAYS"
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(_with_batcher(engine, body, window_s=0.01))
    assert engine.batches == [["first"], ["stays"]]


def test_an_engine_error_reaches_every_request_of_its_batch_and_the_next_batch_runs() -> None:
    engine = FakeEngine()
    engine.fail_next = True

    async def body(batcher: Batcher) -> None:
        outcomes = await asyncio.gather(
            *(batcher.submit(_request(p)) for p in ("a", "b", "c")), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert {str(o) for o in outcomes} == {"the engine broke"}
        assert (await batcher.submit(_request("later"))).text == "LATER"

    asyncio.run(_with_batcher(engine, body, window_s=0.2))
    assert engine.batches == [["a", "b", "c"], ["later"]]


def test_a_request_the_engine_fails_alone_fails_alone() -> None:
    engine = FakeEngine()

    async def body(batcher: Batcher) -> None:
        outcomes = await asyncio.gather(
            *(batcher.submit(_request(p)) for p in ("a", "bad-b", "c")), return_exceptions=True
        )
        assert [getattr(o, "text", None) for o in outcomes] == ["A", None, "C"]
        assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad bad-b"

    asyncio.run(_with_batcher(engine, body, window_s=0.2))
    assert engine.batches == [["a", "bad-b", "c"]]


def test_the_engine_is_told_which_clients_left_while_their_batch_runs() -> None:
    engine = FakeEngine()
    engine.hold = threading.Event()
    streamed: list[int] = []

    async def body(batcher: Batcher) -> None:
        stays = asyncio.create_task(batcher.submit(_request("stays")))
        gone = asyncio.create_task(batcher.submit(_request("gone"), streamed.append))
        await asyncio.to_thread(engine.started.wait, 10)  # both are running
        gone.cancel()  # its client disconnected mid-generation
        await asyncio.sleep(0.05)
        engine.hold.set()  # type: ignore[union-attr]
        assert (await stays).text == "STAYS"
        await asyncio.sleep(0.05)

    asyncio.run(_with_batcher(engine, body, window_s=0.2))
    assert engine.batches == [["stays", "gone"]]
    assert engine.seen_cancelled == [False, True]
    assert streamed == []  # nothing more is handed to a client that left
