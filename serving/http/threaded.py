"""An app served by uvicorn in a thread of this process, on a free local port: the demo's
server, and the benchmarks' and tests' when they need a real socket without a process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve `app` until the block ends; yields its URL once its lifespan has started (the
    engine is built by then). The socket is bound here and handed over, so no other process
    can take the port between choosing and listening."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # A client that keeps a connection open (or a request stuck on a silent upstream) must not
    # hold the block's end for ever: past the grace period, open connections are closed.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise SwitchboardError(ErrorCode.UNAVAILABLE, "the server failed to start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
