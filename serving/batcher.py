"""Continuous request batching in front of an engine.

Requests arriving within a short window (or while the engine is busy) are handed to the
engine together, so concurrent requests for different adapters share one forward pass.
The engine runs in a worker thread; tokens stream back to each request's own callback on
the event loop. A request whose submitter is cancelled (its client left) is dropped before
it runs, and the engine is told so while it runs; each request gets its own result or
error, never its neighbours'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from serving.engine import Generation, GenerationRequest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    request: GenerationRequest
    future: asyncio.Future[Generation]
    on_token: Callable[[int], None] | None


# Runs one batch: the requests, a callback for (index in the batch, new token id), and a
# question (has request i's client left?). Gives each request its generation or its error.
BatchGenerate = Callable[
    [list[GenerationRequest], Callable[[int, int], None], Callable[[int], bool]],
    list[Generation | Exception],
]


class Batcher:
    def __init__(
        self, generate: BatchGenerate, *, max_batch: int = 32, window_s: float = 0.005
    ) -> None:
        self.generate = generate
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="switchboard-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(
        self, request: GenerationRequest, on_token: Callable[[int], None] | None = None
    ) -> Generation:
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(request, future, on_token))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
                except TimeoutError:
                    break
            live = [p for p in batch if not p.future.cancelled()]  # clients that left
            if not live:
                continue

            def dispatch(index: int, token: int, live: list[_Pending] = live) -> None:
                callback = live[index].on_token
                if callback is not None and not live[index].future.done():
                    loop.call_soon_threadsafe(callback, token)

            def left(index: int, live: list[_Pending] = live) -> bool:
                return live[index].future.cancelled()  # its submitter was cancelled

            try:
                results = await asyncio.to_thread(
                    self.generate, [p.request for p in live], dispatch, left
                )
            except Exception as exc:  # the engine gave no per-request answer at all
                log.exception("batch of %d failed", len(live))
                results = [exc] * len(live)
            for pending, result in zip(live, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, Exception):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
