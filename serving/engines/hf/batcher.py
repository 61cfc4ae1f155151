"""Continuous batching in front of an engine's decoding loop.

Requests are submitted on the event loop and wait here; the engine's loop (in a worker
thread) takes them between two decoding steps, as its batch has room, so a request joins the
running batch at the next step instead of waiting for the batch to end. Tokens and answers
go back to each request on the event loop, each request its own. A request whose client left
while it waited is never run; one whose client leaves while it runs is reported to the loop
(`left`), which ends its row at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from switchboard_lora.serving.engines.hf.feed import Feed
from switchboard_lora.serving.engines.interface import Generation, GenerationRequest

log = logging.getLogger(__name__)

# The engine's decoding loop: runs until the feed has nothing waiting and its batch is empty.
Serve = Callable[[Feed], None]


@dataclass(slots=True)
class _Pending:
    request: GenerationRequest
    future: asyncio.Future[Generation]
    on_token: Callable[[int], None] | None


def _settle(future: asyncio.Future[Generation], result: Generation | Exception) -> None:
    if future.done():  # its client left
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher:
    """The server's `Feed`: requests from the event loop, answered on it."""

    def __init__(self, serve: Serve, *, window_s: float = 0.005) -> None:
        self.serve = serve
        self.window_s = window_s  # an idle engine waits this long for a burst to gather
        self._waiting: deque[_Pending] = deque()
        self._running: dict[int, _Pending] = {}
        self._lock = threading.Lock()  # `_waiting` is shared with the engine's thread
        self._keys = 0
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="switchboard-batcher")

    async def stop(self) -> None:
        self._closed = True  # the engine's loop sees every client gone, and takes no more
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(
        self, request: GenerationRequest, on_token: Callable[[int], None] | None = None
    ) -> Generation:
        assert self._wake is not None, "start() the batcher first"
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.append(_Pending(request, future, on_token))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.window_s)
            self._wake.clear()
            try:
                await asyncio.to_thread(self.serve, self)
            except Exception as exc:  # the loop itself broke: its running requests share it
                log.exception("the decoding loop failed with %d requests", len(self._running))
                for key in list(self._running):
                    self.finish(key, exc)

    # ---- the Feed, called from the engine's thread ----------------------------------------

    def take(self, limit: int) -> list[tuple[int, GenerationRequest]]:
        taken: list[tuple[int, GenerationRequest]] = []
        with self._lock:
            while self._waiting and len(taken) < limit and not self._closed:
                pending = self._waiting.popleft()
                if pending.future.cancelled():  # its client left while it waited
                    continue
                self._keys += 1
                self._running[self._keys] = pending
                taken.append((self._keys, pending.request))
        return taken

    def token(self, key: int, token_id: int) -> None:
        pending = self._running[key]
        if pending.on_token is not None and not pending.future.done():
            assert self._loop is not None
            self._loop.call_soon_threadsafe(pending.on_token, token_id)

    def left(self, key: int) -> bool:
        return self._closed or self._running[key].future.cancelled()

    def finish(self, key: int, result: Generation | Exception) -> None:
        pending = self._running.pop(key)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle, pending.future, result)
