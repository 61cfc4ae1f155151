# ruff: noqa: E501  (command lines and report lines read best unwrapped)
"""Fleet benchmark: a Switchboard gateway in front of vLLM servers (issue 16).

    python -m bench.fleet [--adapters 16] [--overhead-requests 100] [--seconds 60]
                          [--clients 8] [--json]

All real processes on 127.0.0.1: vLLM's OpenAI servers with Switchboard's resolver plugin,
and `switchboard serve --upstream …` in front of them, over one registry of `--adapters`
LoRA adapters.
- overhead: a gateway over one upstream; the same one-token request straight to the
  upstream (model = the served name) and through the gateway (model = the adapter's name),
  in pairs; p50/p99 of each and the median of the pairs' differences (target: p50 ≤ 3 ms added beyond routing);
- policies: for affinity, then round-robin, a fresh pair of upstreams and a gateway; --clients
  clients send requests for adapters drawn at random for --seconds: adapter loads per
  upstream (each a checkout and a load into vLLM) and tokens/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from bench._common import HomeOption, default_base, run_benchmark
from bench.serve import make_lora, requests_of
from support.processes import ServerProcess, switchboard_server, vllm_server
from switchboard_lora.registry import BaseModelInfo, Registry, RegistrySettings
from switchboard_lora.registry.experiments.stats import percentile

LOADED = "Resolved and loaded LoRA adapter"


def _fleet(home: Path, base: BaseModelInfo, logs: Path, policy: str, count: int, stack: ExitStack) -> tuple[ServerProcess, list[ServerProcess]]:  # fmt: skip
    """`count` upstreams and a gateway, once all are ready."""
    upstreams = [vllm_server(home, base.path, logs / f"{policy}-{count}-vllm{i}.log") for i in range(count)]  # fmt: skip
    targets = [arg for upstream in upstreams for arg in ("--upstream", upstream.url)]
    env = {"SWITCHBOARD_UPSTREAM_POLICY": policy}
    gateway = switchboard_server(
        home, base.path, logs / f"{policy}-{count}-gateway.log", *targets, env=env
    )
    for process in (gateway, *upstreams):
        stack.callback(process.stop)
    for upstream in upstreams:
        upstream.wait_ready("/health")
    gateway.wait_ready("/readyz", 300)
    return gateway, upstreams


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user and system (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _chat(model: str, text: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0}  # fmt: skip


def overhead(gateway: ServerProcess, upstream: str, name: str, served: str, requests: int) -> dict[str, Any]:  # fmt: skip
    """One-token answers straight to the upstream and through the gateway, in pairs (which
    goes first alternates). The upstream's own latency varies far more than what the gateway
    adds, so the added time is the median of the pairs' differences, not a difference of
    medians; and the gateway's CPU time per request is what it costs on a machine of its own."""
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    ways = [("direct", upstream, served), ("gateway", gateway.url, name)]
    cpu = _cpu_seconds(gateway.proc.pid)
    with httpx.Client(timeout=300) as client:
        for i in range(requests + 2):  # the first two pairs warm up
            for way, url, model in ways if i % 2 else ways[::-1]:
                start = time.perf_counter()
                answer = client.post(f"{url}/v1/chat/completions", json=_chat(model, "Say hi.", 1))
                answer.raise_for_status()
                if i >= 2:
                    times[way].append(time.perf_counter() - start)
    result: dict[str, Any] = {}
    for way, values in times.items():
        result[f"{way}_p50_ms"] = 1000 * (percentile(values, 0.5) or 0.0)
        result[f"{way}_p99_ms"] = 1000 * (percentile(values, 0.99) or 0.0)
    added = [g - d for g, d in zip(times["gateway"], times["direct"], strict=True)]
    result["added_p50_ms"] = 1000 * (percentile(added, 0.5) or 0.0)
    result["gateway_cpu_ms_per_request"] = 1000 * (_cpu_seconds(gateway.proc.pid) - cpu) / (requests + 2)  # fmt: skip
    return result


async def _load(gateway: str, names: list[str], texts: list[str], clients: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"requests": 0, "tokens": 0, "errors": 0}

    async def client(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(timeout=600) as http:
            while time.perf_counter() < until:
                body = _chat(rng.choice(names), rng.choice(texts), 16)
                answer = await http.post(f"{gateway}/v1/chat/completions", json=body)
                if answer.status_code != 200:
                    out["errors"] += 1
                    continue
                out["requests"] += 1
                out["tokens"] += answer.json()["usage"]["completion_tokens"]

    until = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    out["tokens_per_s"] = out["tokens"] / (time.perf_counter() - started)
    return out


def main(
    adapters: Annotated[int, typer.Option(help="LoRA adapters in the registry")] = 16,
    overhead_requests: Annotated[int, typer.Option(help="requests each way")] = 100,
    seconds: Annotated[float, typer.Option(help="load per policy")] = 60.0,
    clients: Annotated[int, typer.Option(help="concurrent clients of the load")] = 8,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    base = default_base(home)
    texts = [t for d in ("math", "sql", "science") for t in requests_of(d, "eval", 10)]
    results: dict[str, Any] = {"adapters": adapters, "clients": clients, "seconds": seconds}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry_home = root / "home"
        registry = Registry(RegistrySettings(home=registry_home).registry_url, registry_home)
        names = [f"domain{i:02d}" for i in range(adapters)]
        for seed, name in enumerate(names, start=1):
            registry.publish(make_lora(base, root / name, seed), name, base)
            shutil.rmtree(root / name)
        first = registry.resolve(names[0]).served_name
        registry.close()
        logs = root / "logs"
        logs.mkdir()
        # The overhead over one upstream: a second vLLM server, idle, would still take its
        # share of this machine's two cores from the two processes measured.
        with ExitStack() as stack:
            gateway, upstreams = _fleet(registry_home, base, logs, "affinity", 1, stack)
            results["overhead"] = overhead(gateway, upstreams[0].url, names[0], first, overhead_requests)  # fmt: skip
        for policy in ("affinity", "round-robin"):
            with ExitStack() as stack:
                gateway, upstreams = _fleet(registry_home, base, logs, policy, 2, stack)
                load = asyncio.run(_load(gateway.url, names, texts, clients, seconds))
                load["loads_per_upstream"] = [u.log().count(LOADED) for u in upstreams]
                results[policy] = load
    if as_json:
        print(json.dumps(results, indent=2))
        return
    o = results["overhead"]
    print(f"overhead ({overhead_requests} one-token requests each way, alternated):")
    print(f"  direct  p50 {o['direct_p50_ms']:.1f} ms  p99 {o['direct_p99_ms']:.1f} ms")
    print(f"  gateway p50 {o['gateway_p50_ms']:.1f} ms  p99 {o['gateway_p99_ms']:.1f} ms")
    print(f"  added   median of paired differences {o['added_p50_ms']:.1f} ms (target p50 <= 3 ms)")  # fmt: skip
    print(f"  gateway CPU time per request {o['gateway_cpu_ms_per_request']:.1f} ms (its routing included)")  # fmt: skip
    print(f"{adapters} adapters over two upstreams, {clients} clients for {seconds:.0f} s each:")
    for policy in ("affinity", "round-robin"):
        r = results[policy]
        print(f"  {policy:11}: adapter loads per upstream {r['loads_per_upstream']}, {r['requests']} requests, {r['errors']} errors, {r['tokens_per_s']:.1f} tokens/s")  # fmt: skip
    ratio = results["affinity"]["tokens_per_s"] / max(results["round-robin"]["tokens_per_s"], 1e-9)
    print(f"  affinity / round-robin throughput: {ratio:.2f}x")


if __name__ == "__main__":
    run_benchmark(main)
