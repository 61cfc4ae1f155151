# ruff: noqa: E501  (request tables and client loops read best unwrapped)
"""Abuse benchmark: what hostile or careless clients cost the well-behaved ones (issue 15).

    python -m bench.abuse [--engine both|hf|vllm] [--seconds 60] [--clients 32] [--json]

Per engine, one real server (uvicorn on a local port, in its own process on its own half of
the CPU cores, so that the clients' work is not charged to it) over a registry with two
adapters:
- clean: --clients well-behaved streaming clients (chat, max_tokens 16, greedy, models auto,
  base and the two adapters) for --seconds: latency p50/p99, time to first token, tokens/s;
- abuse: the same clients again, with --clients more that disconnect after two chunks
  (max_tokens 200) and 4 that send malformed or 10 MB requests in a loop;
- with --phases, also `leavers` (only those that disconnect) and `junk` (only the 4) to see
  what each costs.
Target: the well-behaved clients' p99 under abuse within 1.5x of the clean run, zero errors
for them, and no 5xx to the abusers. Both phases run in one process, side by side.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from bench._common import HomeOption, default_base, run_benchmark
from bench.serve import make_lora, requests_of
from support.processes import free_port
from switchboard_lora.registry import BaseModelInfo, ManifestDraft, Registry, RegistrySettings
from switchboard_lora.registry.experiments.stats import percentile
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.settings import ServerSettings

MODELS = ["auto", "base", "math", "sql"]
BAD_REQUESTS: list[tuple[str, bytes]] = [
    ("malformed JSON", b'{"model": "base", "messages": ['),
    ("10 MB body", b'{"model":"base","messages":[{"role":"user","content":"' + b"a" * (10 << 20) + b'"}]}'),
    ("seed 2**64", json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}).encode()),
    ("tools", json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}).encode()),
    ("lone surrogate", b'{"model":"auto","messages":[{"role":"user","content":"\\ud800 hi"}]}'),
    ("deep nesting", b'{"model":"base","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
]  # fmt: skip


def _streamed_chat(rng: random.Random, texts: list[str], max_tokens: int, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "model": rng.choice(MODELS),
        "messages": [{"role": "user", "content": rng.choice(texts)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **extra,
    }


async def _good(client: httpx.AsyncClient, index: int, texts: list[str], until: float, out: dict[str, Any]) -> None:  # fmt: skip
    rng = random.Random(index)
    while time.perf_counter() < until:
        body = _streamed_chat(rng, texts, 16, stream_options={"include_usage": True})
        start = time.perf_counter()
        first = None
        done = False
        try:
            async with client.stream("POST", "/chat/completions", json=body) as answer:
                if answer.status_code != 200:
                    out["errors"].append(f"status {answer.status_code}")
                    continue
                async for line in answer.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        out["errors"].append(event["error"]["message"][:200])
                        break
                    if (
                        first is None
                        and event["choices"]
                        and event["choices"][0]["delta"].get("content")
                    ):
                        first = time.perf_counter() - start
                    if event.get("usage"):
                        out["tokens"] += event["usage"]["completion_tokens"]
        except httpx.HTTPError as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        if not done:
            out["errors"].append("stream ended without [DONE]")
            continue
        out["latencies"].append(time.perf_counter() - start)
        if first is not None:
            out["first_tokens"].append(first)


async def _leaver(client: httpx.AsyncClient, index: int, texts: list[str], until: float, out: dict[str, Any]) -> None:  # fmt: skip
    rng = random.Random(1000 + index)
    while time.perf_counter() < until:
        body = _streamed_chat(rng, texts, 200)
        try:
            async with client.stream("POST", "/chat/completions", json=body) as answer:
                seen = 0
                async for line in answer.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 3:  # the role chunk and two of text: then gone
                        break
            out["left"] += 1
        except httpx.HTTPError:
            out["left"] += 1


async def _abuser(client: httpx.AsyncClient, index: int, until: float, out: dict[str, Any]) -> None:
    turn = index
    while time.perf_counter() < until:
        what, body = BAD_REQUESTS[turn % len(BAD_REQUESTS)]
        turn += 1
        try:
            answer = await client.post("/chat/completions", content=body, headers={"content-type": "application/json"})  # fmt: skip
            out["abusive"][f"{what}: {answer.status_code}"] = out["abusive"].get(f"{what}: {answer.status_code}", 0) + 1  # fmt: skip
        except httpx.HTTPError as exc:  # the server may close on a refused 10 MB upload
            key = f"{what}: {type(exc).__name__}"
            out["abusive"][key] = out["abusive"].get(key, 0) + 1


# Who runs beside the well-behaved clients in each phase: (clients that leave, junk senders).
PHASES = {"clean": (False, False), "leavers": (True, False), "junk": (False, True), "abuse": (True, True)}  # fmt: skip


async def phase(url: str, texts: list[str], seconds: float, clients: int, name: str) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"latencies": [], "first_tokens": [], "errors": [], "tokens": 0, "left": 0, "abusive": {}}  # fmt: skip
    limits = httpx.Limits(max_connections=4 * clients + 16)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        until = time.perf_counter() + seconds
        tasks = [_good(client, i, texts, until, out) for i in range(clients)]
        leavers, junk = PHASES[name]
        if leavers:
            tasks += [_leaver(client, i, texts, until, out) for i in range(clients)]
        if junk:
            tasks += [_abuser(client, i, until, out) for i in range(4)]
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return {
        "requests": len(out["latencies"]),
        "errors": len(out["errors"]),
        "first_errors": out["errors"][:3],
        "latency_p50_s": percentile(out["latencies"], 0.5),
        "latency_p99_s": percentile(out["latencies"], 0.99),
        "first_token_p50_s": percentile(out["first_tokens"], 0.5),
        "first_token_p99_s": percentile(out["first_tokens"], 0.99),
        "tokens_per_s": out["tokens"] / elapsed,
        "left_early": out["left"],
        "abusive": out["abusive"],
    }


def _serve(settings: ServerSettings, port: int, cores: set[int]) -> None:
    """The server process: pinned to its cores, the engine's threads sized to them."""
    import torch
    import uvicorn

    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


class PinnedServer:
    """The app under uvicorn in a process of its own, on the first half of this machine's
    cores; this process (the clients) keeps the other half."""

    def __init__(self, settings: ServerSettings) -> None:
        cores = sorted(os.sched_getaffinity(0))
        half = max(1, (len(cores) + 1) // 2)
        self.server_cores = set(cores[:half])
        self.client_cores = set(cores[half:]) or self.server_cores
        self.port = free_port()
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=_serve, args=(settings, self.port, self.server_cores))

    def __enter__(self) -> str:
        self.process.start()
        os.sched_setaffinity(0, self.client_cores)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return f"{url}/v1"
            except httpx.TransportError:
                pass
            if not self.process.is_alive():
                break
            time.sleep(0.5)
        raise RuntimeError("the server did not start")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.join(30)
        os.sched_setaffinity(0, self.server_cores | self.client_cores)


def run_engine(engine: str, base: BaseModelInfo, home: Path, seconds: float, clients: int, phases: list[str]) -> dict[str, Any]:  # fmt: skip
    registry = Registry(RegistrySettings(home=home).registry_url, home)
    for seed, domain in enumerate(("math", "sql"), start=1):
        draft = ManifestDraft(routing_examples=requests_of(domain, "train", 40))
        registry.publish(make_lora(base, home / f"lora-{domain}", seed), domain, base, draft=draft)
    registry.close()
    settings = ServerSettings(home=home, base=str(base.path), engine=engine, max_lora_rank=16)
    texts = [t for d in ("math", "sql", "science") for t in requests_of(d, "eval", 10)]
    with PinnedServer(settings) as url:
        asyncio.run(phase(url, texts, min(10.0, seconds), 4, "clean"))  # warm up
        runs = {name: asyncio.run(phase(url, texts, seconds, clients, name)) for name in phases}
    clean = runs["clean"]
    return {
        "engine": engine,
        **runs,
        "ratios": {
            name: {
                "p99": run["latency_p99_s"] / clean["latency_p99_s"],
                "tokens_per_s": run["tokens_per_s"] / clean["tokens_per_s"],
            }
            for name, run in runs.items()
            if name != "clean"
        },
    }


def report(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(f"[{result['engine']}] well-behaved clients:")
        for name in PHASES:
            run = result.get(name)
            if run is None:
                continue
            ratio = result["ratios"].get(name)
            versus = (
                f" | p99 {ratio['p99']:.2f}x clean, tokens/s {ratio['tokens_per_s']:.2f}x"
                if ratio
                else ""
            )
            print(
                f"  {name:7}: {run['requests']} requests, {run['errors']} errors, latency p50 "
                f"{run['latency_p50_s']:.2f} s p99 {run['latency_p99_s']:.2f} s, first token p50 "
                f"{run['first_token_p50_s']:.2f} s, {run['tokens_per_s']:.1f} tokens/s{versus}"
            )
        for name in ("leavers", "junk", "abuse"):
            if name in result:
                print(f"  {name}: clients that left after two chunks {result[name]['left_early']}, "
                      f"junk answered {json.dumps(result[name]['abusive'], sort_keys=True)}")  # fmt: skip
        if "abuse" in result:
            print(
                f"  target: p99 under abuse <= 1.5x clean, zero errors: {result['ratios']['abuse']['p99']:.2f}x"
            )


def main(
    engine: Annotated[str, typer.Option(help="both, hf or vllm")] = "both",
    seconds: Annotated[float, typer.Option(help="length of each phase")] = 60.0,
    clients: Annotated[int, typer.Option(help="well-behaved clients (as many leave early)")] = 32,
    phases: Annotated[
        str, typer.Option(help="comma-separated: clean, leavers, junk, abuse")
    ] = "clean,abuse",
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    base = default_base(home)
    engines = ["hf", "vllm"] if engine == "both" else [engine]
    results = []
    for name in engines:
        with tempfile.TemporaryDirectory() as tmp:
            wanted = ["clean"] + [p for p in phases.split(",") if p in PHASES and p != "clean"]
            results.append(run_engine(name, base, Path(tmp), seconds, clients, wanted))
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    run_benchmark(main)
