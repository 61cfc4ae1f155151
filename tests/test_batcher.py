"""The batcher in front of the transformers engine's decoding loop: what the loop is handed
and when, what a client that left costs, and where an engine error goes. The loop is a fake
that records what it took (the batcher is what is under test; the real loop is in
test_hf_engine and test_hardening)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from switchboard_lora.serving.engines.hf.batcher import Batcher
from switchboard_lora.serving.engines.hf.feed import Feed
from switchboard_lora.serving.engines.interface import Generation, GenerationRequest


class FakeLoop:
    """A decoding loop over a feed: each step hands every running request one token
    (100, 101, …); a request ends after as many steps as its prompt has characters, and is
    answered with its prompt upper-cased. A prompt starting "bad" fails when taken."""

    def __init__(self, room: int = 32, step_s: float = 0.0) -> None:
        self.room = room
        self.step_s = step_s
        self.takes: list[list[str]] = []  # the prompts of each take that got any
        self.loops = 0  # serve() calls
        self.gate: threading.Event | None = None  # each step waits for it, if set
        self.stepping = threading.Event()
        self.fail_next = False
        self.saw_left: list[str] = []

    def serve(self, feed: Feed) -> None:
        self.loops += 1
        running: dict[int, tuple[str, int]] = {}  # key -> (prompt, tokens made)
        while True:
            taken = feed.take(self.room - len(running))
            if taken:
                self.takes.append([r.prompt for _, r in taken])
            for key, request in taken:
                if request.prompt.startswith("bad"):
                    feed.finish(key, ValueError(f"bad {request.prompt}"))
                else:
                    running[key] = (request.prompt, 0)
            if not running:
                if not taken:
                    return
                continue
            self.stepping.set()
            if self.gate is not None:
                self.gate.wait(timeout=10)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("the engine broke")
            time.sleep(self.step_s)
            for key, (prompt, made) in list(running.items()):
                if feed.left(key):
                    self.saw_left.append(prompt)
                    del running[key]
                    feed.finish(key, Generation("", (), 1, "stop"))
                    continue
                feed.token(key, 100 + made)
                running[key] = (prompt, made + 1)
                if made + 1 == len(prompt):
                    del running[key]
                    feed.finish(key, Generation(prompt.upper(), (1,) * len(prompt), 1, "stop"))


def _request(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt)


def _with_batcher(
    loop: FakeLoop, body: Callable[[Batcher], Awaitable[None]], window_s: float = 0.005
) -> None:
    async def run() -> None:
        batcher = Batcher(loop.serve, window_s=window_s)
        await batcher.start()
        try:
            await body(batcher)
        finally:
            await batcher.stop()

    asyncio.run(run())


def test_requests_within_the_window_are_taken_together_and_get_their_own_tokens() -> None:
    loop = FakeLoop()
    tokens: dict[str, list[int]] = {p: [] for p in ("a", "bb", "ccc")}

    async def body(batcher: Batcher) -> None:
        answers = await asyncio.gather(
            *(batcher.submit(_request(p), tokens[p].append) for p in tokens)
        )
        assert [g.text for g in answers] == ["A", "BB", "CCC"]

    _with_batcher(loop, body, window_s=0.2)
    assert loop.takes == [["a", "bb", "ccc"]] and loop.loops == 1
    assert tokens == {"a": [100], "bb": [100, 101], "ccc": [100, 101, 102]}


def test_a_request_joins_the_running_loop_at_its_next_step() -> None:
    """Continuous batching: a short request that arrives while a long one runs is taken by
    the same loop, between two steps, and answered long before the long one ends."""
    loop = FakeLoop(step_s=0.02)
    finished: list[str] = []

    async def body(batcher: Batcher) -> None:
        async def run(prompt: str) -> None:
            finished.append((await batcher.submit(_request(prompt))).text)

        long = asyncio.create_task(run("x" * 100))  # about 2 s of steps
        await asyncio.to_thread(loop.stepping.wait, 10)
        await run("ab")
        assert finished == ["AB"]  # the long one still runs
        await long

    _with_batcher(loop, body)
    assert loop.takes == [["x" * 100], ["ab"]] and loop.loops == 1
    assert finished == ["AB", "X" * 100]


def test_the_loop_is_given_no_more_than_it_has_room_for() -> None:
    loop = FakeLoop(room=2)

    async def body(batcher: Batcher) -> None:
        answers = await asyncio.gather(*(batcher.submit(_request(p)) for p in "abcde"))
        assert [g.text for g in answers] == list("ABCDE")

    _with_batcher(loop, body, window_s=0.2)
    assert [len(t) for t in loop.takes] == [2, 2, 1]
    assert [p for t in loop.takes for p in t] == list("abcde")  # in order of arrival


def test_a_client_that_left_while_queued_is_never_run() -> None:
    loop = FakeLoop(room=1)
    loop.gate = threading.Event()

    async def body(batcher: Batcher) -> None:
        first = asyncio.create_task(batcher.submit(_request("first")))
        await asyncio.to_thread(loop.stepping.wait, 10)  # the loop is busy with it
        gone = asyncio.create_task(batcher.submit(_request("gone")))
        stays = asyncio.create_task(batcher.submit(_request("stays")))
        await asyncio.sleep(0.05)
        gone.cancel()  # the client disconnected while its request waited
        await asyncio.sleep(0.05)
        loop.gate.set()  # type: ignore[union-attr]
        assert (await first).text == "FIRST"
        assert (await stays).text == "STAYS"
        with pytest.raises(asyncio.CancelledError):
            await gone

    _with_batcher(loop, body)
    assert loop.takes == [["first"], ["stays"]]


def test_a_broken_loop_fails_its_running_requests_and_the_next_request_runs() -> None:
    loop = FakeLoop()
    loop.fail_next = True

    async def body(batcher: Batcher) -> None:
        outcomes = await asyncio.gather(
            *(batcher.submit(_request(p)) for p in ("a", "b", "c")), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert {str(o) for o in outcomes} == {"the engine broke"}
        assert (await batcher.submit(_request("later"))).text == "LATER"

    _with_batcher(loop, body, window_s=0.2)
    assert loop.takes == [["a", "b", "c"], ["later"]] and loop.loops == 2


def test_a_request_the_engine_fails_alone_fails_alone() -> None:
    loop = FakeLoop()

    async def body(batcher: Batcher) -> None:
        outcomes = await asyncio.gather(
            *(batcher.submit(_request(p)) for p in ("a", "bad-b", "c")), return_exceptions=True
        )
        assert [getattr(o, "text", None) for o in outcomes] == ["A", None, "C"]
        assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad bad-b"

    _with_batcher(loop, body, window_s=0.2)
    assert loop.takes == [["a", "bad-b", "c"]]


def test_the_loop_is_told_which_clients_left_while_their_requests_run() -> None:
    loop = FakeLoop()
    loop.gate = threading.Event()
    streamed: list[int] = []

    async def body(batcher: Batcher) -> None:
        stays = asyncio.create_task(batcher.submit(_request("stays")))
        gone = asyncio.create_task(batcher.submit(_request("gone"), streamed.append))
        await asyncio.to_thread(loop.stepping.wait, 10)  # both are running
        gone.cancel()  # its client disconnected mid-generation
        await asyncio.sleep(0.05)
        loop.gate.set()  # type: ignore[union-attr]
        assert (await stays).text == "STAYS"
        await asyncio.sleep(0.05)

    _with_batcher(loop, body, window_s=0.2)
    assert loop.takes == [["stays", "gone"]]
    assert loop.saw_left == ["gone"]
    assert streamed == []  # nothing is handed to a client that left
