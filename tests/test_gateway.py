"""A Switchboard gateway in front of a fleet (issue 16, part 2), all real processes on
127.0.0.1: two vLLM OpenAI servers with Switchboard's resolver plugin, and `switchboard
serve --upstream … --upstream …` over one registry; and a gateway in front of another
`switchboard serve`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from serving_world import World, make_lora, requests

from support.processes import ServerProcess, switchboard_server, vllm_server

pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    world: World
    gateway: ServerProcess
    upstreams: list[ServerProcess]

    def chat(self, model: str, text: str = "Name three primary colours.") -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
        return httpx.post(f"{self.gateway.url}/v1/chat/completions", json=body, timeout=300)

    def per_upstream(self, metric: str) -> dict[str, float]:
        """One of the gateway's per-upstream gauges or counters, by upstream (its /metrics)."""
        text = httpx.get(f"{self.gateway.url}/metrics", timeout=30).text
        found = re.findall(rf'{metric}\{{upstream="([^"]+)"\}} (\S+)', text)
        return {url: float(value) for url, value in found}

    def wait_all_healthy(self, timeout_s: float = 120) -> None:
        """Until the gateway has every upstream in its rotation."""
        deadline = time.monotonic() + timeout_s
        while True:
            up = self.per_upstream("switchboard_upstream_healthy")
            if len(up) == len(self.upstreams) and all(v == 1.0 for v in up.values()):
                return
            assert time.monotonic() < deadline, up
            time.sleep(0.5)

    def sent(self) -> dict[str, float]:
        """Requests the gateway has sent to each upstream."""
        return self.per_upstream("switchboard_upstream_seconds_count")


@pytest.fixture(scope="module")
def chain(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A gateway in front of another `switchboard serve` (transformers engine): its URL, the
    upstream's."""
    logs = tmp_path_factory.mktemp("chain")
    base = world.base.path
    upstream = switchboard_server(world.home, base, logs / "upstream.log", "--engine", "hf")
    env = {"SWITCHBOARD_MIX_ALLOW": '["*"]'}
    # The form OpenAI clients take as a base URL: the gateway finds the API root itself.
    base_url = f"{upstream.url}/v1"
    gateway = switchboard_server(world.home, base, logs / "gw.log", "--upstream", base_url, env=env)
    try:
        upstream.wait_ready("/readyz", 300)
        gateway.wait_ready("/readyz", 300)
        yield [gateway.url, upstream.url]
    finally:
        gateway.stop()
        upstream.stop()


def test_a_gateway_in_front_of_another_switchboard_answers_as_it_does(chain: list[str]) -> None:
    gateway, upstream = chain

    def complete(url: str, model: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "prompt": "The three primary colours are", "max_tokens": 12}
        return httpx.post(
            f"{url}/v1/completions", json=body | {"temperature": 0} | extra, timeout=300
        )

    for model in ("math", "base"):
        direct, through = complete(upstream, model).json(), complete(gateway, model).json()
        assert through["choices"][0]["text"] == direct["choices"][0]["text"] != ""
        assert through["usage"] == direct["usage"]
        assert through["switchboard"]["served"] == direct["switchboard"]["served"]
    routed = complete(gateway, "auto", prompt=requests("sql", "eval", 1)[0]).json()
    assert routed["switchboard"]["served"]["ref"] == "sql:1"

    body = {"model": "math", "prompt": "The three primary colours are", "max_tokens": 12}
    with httpx.stream(
        "POST", f"{gateway}/v1/completions", json=body | {"stream": True, "temperature": 0}
    ) as answer:
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert len([p for p in pieces if p]) > 1  # streamed as it came, not in one piece at the end
    assert "".join(pieces) == complete(upstream, "math").json()["choices"][0]["text"]

    mix = {"mix": [{"ref": "math", "weight": 0.7}, {"ref": "sql", "weight": 0.3}]}
    mixed = complete(gateway, "auto", switchboard=mix)
    assert mixed.status_code == 200, mixed.text
    assert mixed.json()["switchboard"]["served"]["served_name"].startswith("mix-")


def test_sampling_fields_logprobs_and_guides_pass_through_a_gateway(chain: list[str]) -> None:
    """Issue 33: what the upstream serves, the gateway's clients get (tokens and logprobs)."""
    gateway, upstream = chain
    body = {
        "model": "math",
        "prompt": "Favourite colours:",
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": 2,
        "repetition_penalty": 1.3,
        "logit_bias": {"28": 3.0},
        "min_tokens": 4,
    }
    for extra in ({}, {"guided_choice": ["red", "green"]}, {"n": 2, "temperature": 1, "seed": 5}):
        direct, through = (
            httpx.post(f"{url}/v1/completions", json=body | extra, timeout=300).json()
            for url in (upstream, gateway)
        )
        assert [c["text"] for c in through["choices"]] == [c["text"] for c in direct["choices"]]
        assert through["choices"][0]["logprobs"] == direct["choices"][0]["logprobs"]
    choice = httpx.post(
        f"{gateway}/v1/completions", json=body | {"guided_choice": ["red", "green"]}, timeout=300
    ).json()
    assert choice["choices"][0]["text"] in ("red", "green")
    declined = httpx.post(f"{gateway}/v1/completions", json=body | {"echo": True}, timeout=300)
    assert declined.status_code == 400 and "prompt_logprobs" in declined.text


@pytest.fixture(scope="module")
def fleet(fresh_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    world = fresh_world  # the fleet's tests publish into it
    logs = tmp_path_factory.mktemp("fleet")
    upstreams = [vllm_server(world.home, world.base.path, logs / f"vllm{i}.log") for i in (1, 2)]
    targets = [arg for upstream in upstreams for arg in ("--upstream", upstream.url)]
    env = {"SWITCHBOARD_MIX_ALLOW": '["*"]'}  # clients may mix (a derived version each)
    gateway = switchboard_server(
        world.home, world.base.path, logs / "gateway.log", *targets, env=env
    )
    try:
        for upstream in upstreams:
            upstream.wait_ready("/health")
        gateway.wait_ready("/readyz", 300)
        fleet = Fleet(world, gateway, upstreams)
        fleet.wait_all_healthy()  # ready means one upstream: where names land depends on all
        yield fleet
    finally:
        for process in (gateway, *upstreams):
            process.stop()


@pytest.mark.vllm
def test_the_fleet_answers_routed_named_streamed_and_new_adapters(fleet: Fleet) -> None:
    routed = fleet.chat("auto", requests("sql", "eval", 1)[0])
    assert routed.status_code == 200, routed.text
    assert routed.json()["switchboard"]["served"]["ref"] == "sql:1"
    assert json.loads(routed.headers["x-switchboard-route"])["served"]["ref"] == "sql:1"
    assert routed.json()["usage"]["completion_tokens"] > 0
    for model in ("base", "math"):
        answer = fleet.chat(model)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]

    body = {
        "model": "math",
        "messages": [{"role": "user", "content": "What is 12 times 12?"}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{fleet.gateway.url}/v1/chat/completions", json=body, timeout=300
    ) as answer:
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text and chunks[-1]["usage"]["completion_tokens"] > 0

    # Published while the fleet runs: answered on its next request, through an upstream.
    world = fleet.world
    fresh = make_lora(world.base, world.home.parent / "fresh-lora", 41)
    world.registry.publish(fresh, "fresh", world.base)
    answer = fleet.chat("fresh")
    assert answer.status_code == 200, answer.text
    assert answer.json()["switchboard"]["served"]["served_name"].startswith("fresh-v1-")

    # A mix: built and published by the gateway, served by name through the resolver.
    mix = {"mix": [{"ref": "math", "weight": 0.7}, {"ref": "sql", "weight": 0.3}]}
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = httpx.post(
        f"{fleet.gateway.url}/v1/chat/completions", json={**body, "switchboard": mix}, timeout=300
    )
    assert answer.status_code == 200, answer.text
    mixed = answer.json()["switchboard"]["served"]["served_name"]
    assert mixed.startswith("mix-") and any(f"'{mixed}'" in u.log() for u in fleet.upstreams)

    refused = fleet.chat("notes")  # a prefix adapter: no vLLM upstream serves it
    assert refused.status_code == 400 and "LoRA adapters only" in refused.json()["error"]["message"]


@pytest.mark.vllm
def test_an_adapter_stays_on_one_upstream_under_light_load(fleet: Fleet) -> None:
    served = f"'{fleet.world.registry.resolve('math').served_name}'"
    loads = [u.log().count(served) for u in fleet.upstreams]
    before = fleet.sent()
    for _ in range(6):
        assert fleet.chat("math").status_code == 200
    after = fleet.sent()
    grew = sorted(after[url] - before.get(url, 0.0) for url in after)
    assert grew == [0.0, 6.0]
    assert any(served in u.log() for u in fleet.upstreams)
    new_loads = [u.log().count(served) - n for u, n in zip(fleet.upstreams, loads, strict=True)]
    assert sum(1 for n in new_loads if n) <= 1  # loaded, if at all now, on one upstream only


async def _client(url: str, model: str, until: float, out: list[dict[str, Any]]) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": 24,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=180) as client:
        while time.monotonic() < until:
            started, outcome = time.monotonic(), "ok"
            try:
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        outcome = f"status {r.status_code}: {(await r.aread())[:200]!r}"
                    else:
                        events = [line async for line in r.aiter_lines() if line.startswith("data")]
                        errors = [e for e in events if '"error"' in e]
                        if errors:
                            outcome = f"error event: {errors[0][:200]}"
                        elif events[-1] != "data: [DONE]":
                            outcome = "no [DONE]"
            except httpx.HTTPError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            out.append({"started": started, "ended": time.monotonic(), "outcome": outcome})


@pytest.mark.vllm
def test_killing_an_upstream_under_load_fails_only_requests_it_was_answering(
    fleet: Fleet,
) -> None:
    """Runs last: it kills an upstream."""
    out: list[dict[str, Any]] = []
    models = ["base", "math", "sql", "auto"]

    async def load() -> float:
        until = time.monotonic() + 40
        clients = [
            _client(fleet.gateway.url, models[i % len(models)], until, out) for i in range(16)
        ]
        running = asyncio.gather(*clients)
        await asyncio.sleep(12)
        busy = max(fleet.upstreams, key=lambda u: fleet.sent().get(u.url, 0.0))
        busy.kill()
        killed = time.monotonic()
        await running
        return killed

    killed = asyncio.run(load())
    assert len(out) > 16
    assert all(r["ended"] - r["started"] < 170 for r in out)  # none hung
    after = [r for r in out if r["started"] > killed + 1]
    assert after and all(r["outcome"] == "ok" for r in after), after
    failed = [r for r in out if r["outcome"] != "ok"]
    assert all(r["started"] < killed for r in failed), failed  # only those it was answering
    assert all("upstream" in r["outcome"] for r in failed), failed  # each says why
    assert httpx.get(f"{fleet.gateway.url}/readyz", timeout=30).status_code == 200
