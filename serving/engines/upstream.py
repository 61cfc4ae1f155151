"""The gateway's engine: generation sent to OpenAI-compatible upstreams (issue 16, part 2).

`switchboard serve --upstream URL …` keeps routing, the registry, A/B tests, keys, the admin
API and metrics, and hands each generation to one of a fleet of `vllm serve` replicas (with
Switchboard's resolver plugin, so `model=<served name>` loads the version on first use) or
of other `switchboard serve`s (which take served names and `return_token_ids` alike).

- Adapter affinity: requests for one served name go to the same upstream while it has room
  (rendezvous hashing over the healthy upstreams: a name moves only when its upstream leaves),
  and spill to the name's next upstream past `max_in_flight`, so each adapter is loaded on as
  few replicas as the load needs. `round-robin` is there to compare with.
- Health: each upstream's `/v1/models` is asked every `health_s`; one that fails a request or
  a check leaves the rotation until a check passes again.
- A request whose upstream fails before its first token is retried once on another upstream;
  one that fails after is failed (the stream ends with an error event), never left hanging.

Tokens pass through exactly: the upstream is asked for `/v1/completions` on the prompt this
gateway rendered, with `return_token_ids` (a vLLM extension) so each streamed chunk carries
its token ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.engines.interface import (
    EngineChoice,
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenCallback,
    TokenLogprob,
)
from switchboard_lora.serving.engines.tokens import Tokens

log = logging.getLogger(__name__)

Policy = Literal["affinity", "round-robin"]
NOT_CHECKED = "not checked yet"


def api_root(url: str) -> str:
    """An upstream's URL up to its API root. Both forms users write are taken: the server's
    (`http://h:8000`) and the OpenAI clients' base URL (`http://h:8000/v1`)."""
    root = url.strip().rstrip("/")
    try:
        parsed = httpx.URL(root)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT,
            f"upstream {url!r} is not an http(s) URL such as http://10.0.0.5:8000",
        )
    return root.removesuffix("/v1")


@dataclass(eq=False)
class Upstream:
    url: str  # up to the API root, e.g. http://10.0.0.5:8000
    healthy: bool = False  # until its first health check passes
    problem: str | None = NOT_CHECKED  # why it is out of the rotation
    in_flight: int = 0
    base_model: str | None = None  # what its /v1/models calls the base
    max_model_len: int | None = None
    requests: int = 0  # finished, failed or not
    errors: int = 0
    seconds: float = 0.0  # their total time


def rendezvous(key: str, upstreams: list[Upstream]) -> list[Upstream]:
    """The upstreams in `key`'s order of preference (highest random weight first)."""

    def weight(upstream: Upstream) -> bytes:
        return hashlib.blake2b(f"{upstream.url}\0{key}".encode(), digest_size=8).digest()

    return sorted(upstreams, key=weight, reverse=True)


class UpstreamPool:
    def __init__(
        self, urls: list[str], *, max_in_flight: int = 16, policy: Policy = "affinity"
    ) -> None:
        if not urls:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "a gateway needs an upstream")
        self.upstreams = [Upstream(api_root(url)) for url in urls]
        self.max_in_flight = max_in_flight
        self.policy = policy
        self._turn = itertools.count()

    @property
    def ready(self) -> bool:
        return any(u.healthy for u in self.upstreams)

    @property
    def unready_reason(self) -> str | None:
        if self.ready:
            return None
        return "no upstream is healthy: " + "; ".join(
            f"{u.url}: {u.problem}" for u in self.upstreams
        )

    def choose(self, key: str, exclude: tuple[Upstream, ...] = ()) -> Upstream | None:
        """The upstream for a request on `key` (a served name; "" for the base), or None when
        no healthy upstream is left."""
        healthy = [u for u in self.upstreams if u.healthy and u not in exclude]
        if not healthy:
            return None
        if self.policy == "round-robin":
            return healthy[next(self._turn) % len(healthy)]
        preferred = rendezvous(key, healthy)
        for upstream in preferred:
            if upstream.in_flight < self.max_in_flight:
                return upstream
        return min(preferred, key=lambda u: u.in_flight)  # all full: the least loaded

    @contextlib.contextmanager
    def using(self, upstream: Upstream) -> Iterator[None]:
        """Counts a request on `upstream` while it runs, and its time and outcome after."""
        upstream.in_flight += 1
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            if not isinstance(exc, SwitchboardError) or exc.code == ErrorCode.UNAVAILABLE:
                upstream.errors += 1  # the upstream's failure, not a request it refused
            raise
        finally:
            upstream.in_flight -= 1
            upstream.requests += 1
            upstream.seconds += time.perf_counter() - start

    def failed(self, upstream: Upstream, why: object) -> None:
        """Out of the rotation, saying why: logged when it leaves, and at its first check (a
        wrong URL or a server still starting shows at once, not as a silent 503)."""
        reason = str(why) or type(why).__name__
        if upstream.healthy:
            log.warning("upstream %s leaves the rotation: %s", upstream.url, reason)
        elif upstream.problem == NOT_CHECKED:
            log.warning("upstream %s is not in the rotation: %s", upstream.url, reason)
        upstream.healthy = False
        upstream.problem = reason

    async def check(self, client: httpx.AsyncClient, upstream: Upstream) -> None:
        """Ask an upstream's `/v1/models`: healthy if it answers, and what it calls its base."""
        try:
            answer = await client.get(f"{upstream.url}/v1/models", timeout=5)
            answer.raise_for_status()
            models = {m["id"]: m for m in answer.json()["data"] if not m.get("parent")}
            # vLLM lists its base first; a Switchboard upstream calls its own `base`.
            base = models.get("base") or next(iter(models.values()))
        except (httpx.HTTPError, ValueError, KeyError, TypeError, StopIteration) as exc:
            self.failed(upstream, exc)
            return
        if not upstream.healthy:
            log.info("upstream %s is in the rotation", upstream.url)
        upstream.base_model = base["id"]
        upstream.max_model_len = base.get("max_model_len")
        upstream.healthy, upstream.problem = True, None

    async def watch(self, client: httpx.AsyncClient, every_s: float) -> None:
        while True:
            await asyncio.gather(*(self.check(client, u) for u in self.upstreams))
            await asyncio.sleep(every_s)


class _BeforeFirstToken(Exception):
    """The upstream failed before it sent a token: the request may go to another."""


class UpstreamEngine:
    name = "upstream"
    choice: EngineChoice | None = None

    def __init__(
        self,
        tokens: Tokens,
        pool: UpstreamPool,
        *,
        max_model_len: int,
        health_s: float = 5.0,
    ) -> None:
        self.tokens = tokens
        self.pool = pool
        self.max_model_len = max_model_len
        self.health_s = health_s
        self._client: httpx.AsyncClient | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.pool.ready

    @property
    def unready_reason(self) -> str | None:
        return self.pool.unready_reason

    def collectors(self) -> list[Collector]:
        return [UpstreamCollector(self.pool)]

    def declines(self, params: SamplingParams) -> tuple[str, str] | None:
        if params.prompt_logprobs is not None:  # a vLLM upstream's engine dies on them
            return "prompt_logprobs", "a vLLM upstream fails on them; serve with --engine hf"
        return None

    def refuses(self, method: str, rank: int | None) -> str | None:
        # The upstreams' resolver refuses what they cannot serve; vLLM serves LoRA only.
        return None if method == "lora" else "vLLM upstreams serve LoRA adapters only"

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5), limits=limits)
        await asyncio.gather(*(self.pool.check(self._client, u) for u in self.pool.upstreams))
        self._watch = asyncio.create_task(self.pool.watch(self._client, self.health_s))

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._client is not None:
            await self._client.aclose()

    async def submit(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> Generation:
        key = request.adapter.served_name if request.adapter is not None else ""
        tried: tuple[Upstream, ...] = ()
        while True:
            upstream = self.pool.choose(key, exclude=tried)
            if upstream is None:
                raise SwitchboardError(
                    ErrorCode.UNAVAILABLE, "no upstream is available for this request"
                )
            tried += (upstream,)
            try:
                return await self._generate(upstream, request, on_token)
            except _BeforeFirstToken as exc:
                self.pool.failed(upstream, exc)
                if len(tried) == 2:
                    raise SwitchboardError(
                        ErrorCode.UNAVAILABLE, f"upstreams failed: {exc}"
                    ) from exc
                log.info("retrying on another upstream: %s", exc)

    async def _generate(
        self, upstream: Upstream, request: GenerationRequest, on_token: TokenCallback | None
    ) -> Generation:
        assert self._client is not None
        p = request.params
        prompt_ids = request.ids(self.tokens)
        body: dict[str, Any] = {
            "model": request.adapter.served_name if request.adapter else upstream.base_model,
            "prompt": prompt_ids,  # exactly the tokens rendered here
            "return_token_ids": True,
            **request_fields(p),
        }
        # Streamed only for a caller that takes tokens as they come: one answer is cheaper
        # for both sides than a stream of events.
        if on_token is not None:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if p.logprobs is not None:
            body["return_tokens_as_token_ids"] = True  # token texts are ambiguous; ids are not
        text: list[str] = []
        ids: list[int] = []
        logprobs: list[dict[str, Any]] = []
        finish: Any = "length"
        prompt_tokens = 0
        with self.pool.using(upstream):
            try:
                async with self._client.stream(
                    "POST", f"{upstream.url}/v1/completions", json=body
                ) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        raise _refusal(upstream, answer)
                    events = _events(answer) if on_token is not None else _whole(answer)
                    async for event in events:
                        choice = (event.get("choices") or [{}])[0]
                        new = choice.get("token_ids") or []
                        text.append(choice.get("text") or "")
                        ids.extend(new)
                        if choice.get("logprobs"):
                            logprobs.append(choice["logprobs"])
                        if on_token is not None:
                            for token in new:
                                on_token(token)
                        finish = choice.get("finish_reason") or finish
                        if event.get("usage"):
                            prompt_tokens = event["usage"]["prompt_tokens"]
            except httpx.TransportError as exc:
                if not ids:
                    raise _BeforeFirstToken(f"{upstream.url}: {exc}") from exc
                self.pool.failed(upstream, exc)
                raise SwitchboardError(
                    ErrorCode.UNAVAILABLE, f"upstream {upstream.url} failed mid-answer: {exc}"
                ) from exc
        steps = logprobs_of(logprobs, p.logprobs) if p.logprobs is not None else None
        return Generation(
            "".join(text), tuple(ids), prompt_tokens, finish, steps, tuple(prompt_ids)
        )


def request_fields(p: SamplingParams) -> dict[str, Any]:
    """Sampling settings as the completions API's fields (vLLM's names, which a Switchboard
    upstream takes too); settings at their neutral value are left out."""
    fields: dict[str, Any] = {
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "stop": list(p.stop),
        "seed": p.seed,
        "logprobs": p.logprobs,
        "ignore_eos": p.ignore_eos or None,
        "top_k": p.top_k if p.top_k > 0 else None,
        "min_p": p.min_p or None,
        "repetition_penalty": p.repetition_penalty if p.repetition_penalty != 1.0 else None,
        "presence_penalty": p.presence_penalty or None,
        "frequency_penalty": p.frequency_penalty or None,
        "min_tokens": p.min_tokens or None,
        "stop_token_ids": list(p.stop_token_ids) or None,
        "logit_bias": {str(t): b for t, b in p.logit_bias} or None,
        "allowed_token_ids": None if p.allowed_token_ids is None else list(p.allowed_token_ids),
    }
    if p.guide is not None:
        spec = json.loads(p.guide.spec) if p.guide.kind in ("json", "choice") else p.guide.spec
        fields["structured_outputs"] = {p.guide.kind: spec}
    return {name: value for name, value in fields.items() if value is not None}


def logprobs_of(chunks: list[dict[str, Any]], k: int) -> tuple[TokenLogprob, ...]:
    """The completions API's logprobs (the parallel lists of each chunk) as token ids' log
    probabilities; the upstream names tokens as `token_id:N` (asked for)."""
    steps = []
    for chunk in chunks:
        for token, logprob, top in zip(
            chunk["tokens"], chunk["token_logprobs"], chunk["top_logprobs"], strict=True
        ):
            alternatives = tuple((_token_id(t), lp) for t, lp in (top or {}).items())[:k]
            steps.append(TokenLogprob(_token_id(token), logprob, alternatives))
    return tuple(steps)


def _token_id(name: str) -> int:
    return int(name.removeprefix("token_id:"))


def _refusal(upstream: Upstream, answer: httpx.Response) -> Exception:
    """An upstream's non-200 answer: its own 4xx passed on; a 5xx may go to another."""
    try:
        message = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = answer.text[:500]
    if answer.status_code >= 500:
        return _BeforeFirstToken(f"{upstream.url}: {answer.status_code} {message}")
    code = ErrorCode.NOT_FOUND if answer.status_code == 404 else ErrorCode.INVALID_INPUT
    return SwitchboardError(code, f"upstream: {message}")


async def _whole(answer: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """A plain answer, as the one event it amounts to."""
    try:
        yield json.loads(await answer.aread())
    except ValueError as exc:
        raise SwitchboardError(ErrorCode.UNAVAILABLE, f"upstream: not JSON: {exc}") from exc


async def _events(answer: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream, up to `[DONE]`."""
    async for line in answer.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            return
        event: dict[str, Any] = json.loads(data)
        if "error" in event:
            raise SwitchboardError(ErrorCode.UNAVAILABLE, f"upstream: {event['error']}")
        yield event


class UpstreamCollector(Collector):
    """The upstreams' health, load, errors and latency, read at each scrape."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def collect(self) -> list[Metric]:
        label = ["upstream"]
        healthy = GaugeMetricFamily(
            "switchboard_upstream_healthy", "1 while the upstream is in the rotation", labels=label
        )
        in_flight = GaugeMetricFamily(
            "switchboard_upstream_in_flight", "Requests running on the upstream", labels=label
        )
        errors = CounterMetricFamily(
            "switchboard_upstream_errors", "Requests the upstream failed", labels=label
        )
        latency = SummaryMetricFamily(
            "switchboard_upstream_seconds", "Time of requests sent to the upstream", labels=label
        )
        for u in self.pool.upstreams:
            healthy.add_metric([u.url], float(u.healthy))
            in_flight.add_metric([u.url], u.in_flight)
            errors.add_metric([u.url], u.errors)
            latency.add_metric([u.url], u.requests, u.seconds)
        return [healthy, in_flight, errors, latency]
