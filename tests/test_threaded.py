"""The in-thread server (the demo's, and the benchmarks' and tests'): a failure to start and
a server that answers with an error are the server being unavailable (503's code), never the
user's input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from switchboard_lora.demo import DemoRequest, ask
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.http.threaded import serve_in_thread


def test_it_serves_until_the_block_ends() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/ping").json() == {"pong": "yes"}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/ping", timeout=2)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's
def test_a_server_that_cannot_start_is_unavailable() -> None:
    @asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("no engine")
        yield

    with pytest.raises(SwitchboardError) as failed, serve_in_thread(FastAPI(lifespan=broken)):
        pass
    assert failed.value.code == ErrorCode.UNAVAILABLE


def test_the_demo_reports_a_servers_error_as_unavailable() -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def overloaded() -> JSONResponse:
        return JSONResponse({"error": {"message": "the server is starting"}}, status_code=503)

    with serve_in_thread(app) as url, pytest.raises(SwitchboardError) as failed:
        ask(url, [DemoRequest("What is 2 + 2?", "math")], max_tokens=4)
    assert failed.value.code == ErrorCode.UNAVAILABLE
    assert "503" in failed.value.message and "starting" in failed.value.message
