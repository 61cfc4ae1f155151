"""Issue 34, items 11-16: a gateway never hangs and never reports a success it did not get.
A real `switchboard serve --upstream` app (in a thread, real sockets) in front of a scripted
upstream, the other side of the seam: an HTTP server that misbehaves as told."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from serving_world import World

from switchboard_lora.serving.engines.upstream import Timeouts, UpstreamPool
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.http.threaded import serve_in_thread
from switchboard_lora.serving.settings import ServerSettings

pytestmark = pytest.mark.slow

FIRST_S, TOKEN_S = 1.5, 1.0
FOREVER = 3600


def _sse(*events: Any, done: bool = True) -> list[str]:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    return lines + ["data: [DONE]\n\n"] * done


def _chunk(ids: list[Any], text: str = "x", finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": finish}]}


GOOD = _sse(
    _chunk([28]), _chunk([29], finish="stop"), {"choices": [], "usage": {"prompt_tokens": 3}}
)
# (mode, what the upstream streams: lines, then a pause, or a whole body with its type)
MODES: dict[str, Any] = {
    "good": GOOD,
    "silent": [FOREVER],
    "stall": [*_sse(_chunk([28]), done=False), FOREVER],
    "bad-json": _sse("{not json"),
    "html": ("text/html", "<html><body>502 Bad Gateway</body></html>"),
    "list": _sse([1, 2, 3]),
    "list-json": ("application/json", "[1, 2, 3]"),
    "bad-ids": _sse(_chunk(["x", -5, 1e12])),
    "ids-outside": _sse(_chunk([10**9])),
    "no-done": _sse(_chunk([28]), done=False),
    "error-event": _sse(_chunk([28]), {"error": {"message": "engine died"}}, done=False),
}


def scripted_upstream(state: dict[str, str]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "base", "max_model_len": 2048}]})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await request.json()
        script = MODES[state["mode"]]
        if isinstance(script, tuple):
            return Response(script[1], media_type=script[0])
        if not body.get("stream"):  # the health check's one token
            if script is not GOOD:
                await asyncio.sleep(FOREVER)
            return JSONResponse(
                {
                    "choices": [{"text": "x", "token_ids": [28], "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 1},
                }
            )

        async def lines() -> AsyncIterator[str]:
            for line in script:
                if isinstance(line, int):
                    await asyncio.sleep(line)
                yield str(line) if not isinstance(line, int) else ""

        return StreamingResponse(lines(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def fleet(world: World) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(gateway URL, upstream URL, the upstream's mode)."""
    state = {"mode": "good"}
    with serve_in_thread(scripted_upstream(state)) as upstream:
        settings = ServerSettings(
            home=world.home, base=str(world.base.path), upstreams=[upstream], upstream_health_s=0.2,
            upstream_first_token_timeout_s=FIRST_S, upstream_token_timeout_s=TOKEN_S,
        )  # fmt: skip
        with serve_in_thread(create_app(settings)) as gateway:
            yield gateway, upstream, state


def _healthy_again(gateway: str, state: dict[str, str]) -> None:
    state["mode"] = "good"
    deadline = time.monotonic() + 30
    while httpx.get(f"{gateway}/readyz").status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"{gateway}/readyz").text
        time.sleep(0.1)


BODY = {"model": "base", "prompt": "Hello", "max_tokens": 4}
# (mode, status, what the error says, the most seconds it may take)
FAULTS = [
    ("silent", 504, "sent nothing in 1.5 s for a first token", FIRST_S + 2),
    ("stall", 504, "failed mid-answer: sent nothing in 1 s", FIRST_S + TOKEN_S + 2),
    ("bad-json", 502, "not a completions answer", 5),
    ("html", 502, "answered text/html", 5),
    ("list", 502, "not a completions answer", 5),
    ("list-json", 502, "not a completions answer", 5),
    ("bad-ids", 502, "not a completions answer (choices.0.token_ids.0", 5),
    ("ids-outside", 502, "outside the vocabulary", 5),
    ("no-done", 502, "ended without [DONE]", 5),
    ("error-event", 502, "ended with an error: engine died", 5),
]  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_misbehaving_upstream_is_an_error_naming_it_never_a_hang_or_a_success(
    fleet: tuple[str, str, dict[str, str]], fault: tuple[str, int, str, float]
) -> None:
    gateway, upstream, state = fleet
    mode, status, message, seconds = fault
    _healthy_again(gateway, state)
    state["mode"] = mode
    start = time.monotonic()
    answer = httpx.post(f"{gateway}/v1/completions", json=BODY, timeout=60)
    assert time.monotonic() - start < seconds
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert upstream in error["message"] and message in error["message"], error

    _healthy_again(gateway, state)
    state["mode"] = mode
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{gateway}/v1/completions", json={**BODY, "stream": True}, timeout=60
    ) as streamed:
        events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - start < seconds
    if streamed.status_code == 200:  # failed after the headers: an error event ends it
        last = json.loads(events[-1])
        assert upstream in last["error"]["message"] and message in last["error"]["message"], last
        assert not any(
            e.get("choices", [{}])[0].get("finish_reason") for e in map(json.loads, events[:-1])
        )
    else:
        assert streamed.status_code == status


def test_a_hung_upstream_stays_out_though_its_model_list_answers(
    fleet: tuple[str, str, dict[str, str]],
) -> None:
    """Item 12: after a timeout, the next check passed and the hang repeated, 600 s each."""
    gateway, upstream, state = fleet
    _healthy_again(gateway, state)
    state["mode"] = "silent"
    assert httpx.post(f"{gateway}/v1/completions", json=BODY, timeout=60).status_code == 504
    time.sleep(1.0)  # several health checks: /v1/models answers, one token does not
    start = time.monotonic()
    again = httpx.post(f"{gateway}/v1/completions", json=BODY, timeout=60)
    assert again.status_code == 503 and time.monotonic() - start < 1.0
    ready = httpx.get(f"{gateway}/readyz").json()
    assert not ready["ready"] and upstream in ready["reason"]
    _healthy_again(gateway, state)
    assert httpx.post(f"{gateway}/v1/completions", json=BODY, timeout=60).status_code == 200


def test_an_upstream_that_accepts_and_never_answers_is_logged_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Item 11: a socket that accepts connections and never answers: never ready, and
    nothing said."""
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)  # the kernel completes connections; nobody reads them
    pool = UpstreamPool([f"http://127.0.0.1:{mute.getsockname()[1]}"])

    async def check() -> None:
        async with httpx.AsyncClient() as client:
            await pool.check(client, pool.upstreams[0], Timeouts(1.0, 0.5, 0.5).check)

    with caplog.at_level(logging.WARNING, logger="switchboard_lora.serving.engines.upstream"):
        asyncio.run(check())
    mute.close()
    [said] = [r.getMessage() for r in caplog.records]
    assert (
        "is not in the rotation: no answer to GET /v1/models within its timeout (ReadTimeout)"
        in said
    )
    assert not pool.ready and "ReadTimeout" in (pool.unready_reason or "")
