"""The gateway's choice of upstream: adapter affinity by rendezvous hashing, spill past the
in-flight limit, health, and what /metrics says of each upstream. (The fleet itself, with
real vLLM servers, is in test_gateway.)"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.engines.upstream import (
    Timeouts,
    UpstreamCollector,
    UpstreamPool,
    rendezvous,
)
from switchboard_lora.serving.http.metrics import Metrics

URLS = [f"http://10.0.0.{i}:8000" for i in range(1, 5)]
NAMES = [f"domain{i}-v1-0123456789ab" for i in range(200)]


def _pool(urls: list[str] = URLS, **kw: object) -> UpstreamPool:
    pool = UpstreamPool(urls, **kw)  # type: ignore[arg-type]
    for upstream in pool.upstreams:
        upstream.healthy = True
    return pool


def test_rendezvous_spreads_names_and_moves_only_those_of_an_upstream_that_leaves() -> None:
    pool = _pool()
    first = {name: rendezvous(name, pool.upstreams)[0].url for name in NAMES}
    shares = [list(first.values()).count(url) for url in URLS]
    assert min(shares) > len(NAMES) / len(URLS) / 2  # every upstream gets its share
    leaving = pool.upstreams[1]
    rest = [u for u in pool.upstreams if u is not leaving]
    after = {name: rendezvous(name, rest)[0].url for name in NAMES}
    moved = {name for name in NAMES if after[name] != first[name]}
    assert moved == {name for name in NAMES if first[name] == leaving.url}


def test_one_adapter_stays_on_one_upstream_until_it_is_full_then_spills_in_order() -> None:
    pool = _pool(max_in_flight=2)
    name = NAMES[0]
    order = rendezvous(name, pool.upstreams)
    assert [pool.choose(name) for _ in range(5)] == [order[0]] * 5  # nothing in flight yet
    held = [pool.using(pool.choose(name)) for _ in range(2)]  # type: ignore[arg-type]
    for use in held:
        use.__enter__()
    assert pool.choose(name) is order[1]  # the first is full: its next upstream
    for upstream in pool.upstreams:
        upstream.in_flight = 2
    order[3].in_flight = 1
    assert pool.choose(name) is order[3]  # all full: the least loaded
    for use in held:
        use.__exit__(None, None, None)
    assert order[0].in_flight == 0 and order[0].requests == 2


def test_unhealthy_upstreams_are_left_out_and_none_left_is_said() -> None:
    pool = _pool(URLS[:2])
    name = NAMES[0]
    preferred = pool.choose(name)
    assert preferred is not None
    pool.failed(preferred, "connection refused")
    other = pool.choose(name)
    assert other is not None and other is not preferred and pool.ready
    assert pool.choose(name, exclude=(other,)) is None
    pool.failed(other, "connection refused")
    assert pool.choose(name) is None and not pool.ready


def test_round_robin_takes_each_upstream_in_turn_whatever_the_adapter() -> None:
    pool = _pool(URLS[:3], policy="round-robin")
    assert [pool.choose(NAMES[0]).url for _ in range(6)] == URLS[:3] * 2  # type: ignore[union-attr]


def test_only_the_upstreams_own_failures_count_as_its_errors() -> None:
    pool = _pool(URLS[:1])
    upstream = pool.upstreams[0]
    with pytest.raises(SwitchboardError), pool.using(upstream):
        raise SwitchboardError(ErrorCode.NOT_FOUND, "upstream: no such adapter")
    with pytest.raises(ConnectionError), pool.using(upstream):
        raise ConnectionError("reset")
    assert (upstream.requests, upstream.errors, upstream.in_flight) == (2, 1, 0)


def test_metrics_show_each_upstream() -> None:
    pool = _pool(URLS[:2])
    pool.upstreams[0].in_flight = 3
    pool.failed(pool.upstreams[1], "down")
    metrics = Metrics()
    metrics.watch(UpstreamCollector(pool))
    text = metrics.render()[0].decode()
    assert f'switchboard_upstream_in_flight{{upstream="{URLS[0]}"}} 3.0' in text
    assert f'switchboard_upstream_healthy{{upstream="{URLS[1]}"}} 0.0' in text
    assert f'switchboard_upstream_seconds_count{{upstream="{URLS[0]}"}} 0.0' in text


def test_a_gateway_needs_an_upstream() -> None:
    with pytest.raises(SwitchboardError, match="needs an upstream"):
        UpstreamPool([])


def test_both_url_forms_reach_the_same_api_and_anything_else_is_refused_at_start() -> None:
    pool = UpstreamPool(["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/", "https://h/api/v1/"])
    assert [u.url for u in pool.upstreams] == [
        "http://10.0.0.1:8000",
        "http://10.0.0.2:8000",
        "https://h/api",
    ]
    for wrong in ("10.0.0.1:8000", "ftp://h", "http://"):
        with pytest.raises(SwitchboardError, match="not an http\\(s\\) URL") as refused:
            UpstreamPool([wrong])
        assert refused.value.code == ErrorCode.INVALID_INPUT


def _answering(models: dict[str, object] | None) -> httpx.AsyncClient:
    """A client whose other side answers /v1/models with `models`, or refuses to connect;
    every URL it was asked for is kept on it."""
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if models is None:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path != "/v1/models":
            return httpx.Response(404)
        return httpx.Response(200, json=models)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    client.asked = asked  # type: ignore[attr-defined]
    return client


def test_a_failed_first_check_and_every_change_of_health_is_logged_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = UpstreamPool(["http://10.0.0.9:8000/v1"])
    upstream = pool.upstreams[0]
    assert pool.unready_reason == "no upstream is healthy: http://10.0.0.9:8000: not checked yet"
    listing = {"data": [{"id": "base", "max_model_len": 2048}]}

    async def checks() -> list[str]:
        async with _answering(None) as down, _answering(listing) as up:
            await pool.check(down, upstream, Timeouts().check)  # first check fails: said at once
            await pool.check(down, upstream, Timeouts().check)  # still down: said once only
            await pool.check(up, upstream, Timeouts().check)  # back
            await pool.check(down, upstream, Timeouts().check)  # leaves again
            return [*down.asked, *up.asked]  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, logger="switchboard_lora.serving.engines.upstream"):
        asked = asyncio.run(checks())
    assert set(asked) == {"http://10.0.0.9:8000/v1/models"}  # never /v1/v1/models
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "upstream http://10.0.0.9:8000 is not in the rotation: connection refused",
        "upstream http://10.0.0.9:8000 is in the rotation",
        "upstream http://10.0.0.9:8000 leaves the rotation: connection refused",
    ]
    assert not pool.ready
    assert pool.unready_reason == "no upstream is healthy: http://10.0.0.9:8000: connection refused"
