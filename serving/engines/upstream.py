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
  a check leaves the rotation until a check passes again (after a failed generation, the
  check also asks it for one token: an upstream whose model list answers while its engine
  hangs stays out). Every change is logged with its reason.
- Never hanging (`Timeouts`): a connection must open within `connect_s`, the first token come
  within `first_token_s`, each next one within `token_s`; past them the request fails
  (a 504 naming the upstream and the timeout, or an error event in a stream).
- A request whose upstream fails before its first token is retried once on another upstream;
  one that fails after is failed (the stream ends with an error event), never left hanging.
- A malformed answer (`upstream_wire`) is a 502 naming the upstream, never a success.

Tokens pass through exactly: the upstream is asked for `/v1/completions` on the prompt this
gateway rendered, with `return_token_ids` (a vLLM extension) so each streamed chunk carries
its token ids. Answers are streamed from the upstream (silence is only seen in a stream),
but for logprobs, which Switchboard upstreams do not stream: those may take `token_s` per
token asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

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
)
from switchboard_lora.serving.engines.tokens import Tokens
from switchboard_lora.serving.engines.upstream_wire import (
    BadAnswer,
    events,
    logprobs_of,
    refusal,
    request_fields,
)

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
    probe: bool = False  # failed a generation: a check must see one succeed
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

    def failed(self, upstream: Upstream, why: object, *, generating: bool = False) -> None:
        """Out of the rotation, saying why: logged when it leaves, at its first check (a
        wrong URL or a server still starting shows at once, not as a silent 503), and when
        the reason changes."""
        reason = describe(why)
        if upstream.healthy:
            log.warning("upstream %s leaves the rotation: %s", upstream.url, reason)
        elif upstream.problem != reason:
            log.warning("upstream %s is not in the rotation: %s", upstream.url, reason)
        upstream.healthy = False
        upstream.problem = reason
        upstream.probe = upstream.probe or generating

    async def check(
        self, client: httpx.AsyncClient, upstream: Upstream, timeout: httpx.Timeout
    ) -> None:
        """Ask an upstream's `/v1/models`: healthy if it answers, and what it calls its base;
        after a failed generation, one token from its base too."""
        try:
            answer = await client.get(f"{upstream.url}/v1/models", timeout=timeout)
            answer.raise_for_status()
            models = {m["id"]: m for m in answer.json()["data"] if not m.get("parent")}
            # vLLM lists its base first; a Switchboard upstream calls its own `base`.
            base = models.get("base") or next(iter(models.values()))
            if upstream.probe:
                one = {"model": base["id"], "prompt": [0], "max_tokens": 1}
                probe = await client.post(
                    f"{upstream.url}/v1/completions", json=one, timeout=timeout
                )
                probe.raise_for_status()
        except (httpx.HTTPError, ValueError, KeyError, TypeError, StopIteration) as exc:
            self.failed(upstream, exc)
            return
        if not upstream.healthy:
            log.info("upstream %s is in the rotation", upstream.url)
        upstream.base_model = base["id"]
        upstream.max_model_len = base.get("max_model_len")
        upstream.healthy, upstream.problem, upstream.probe = True, None, False

    async def watch(
        self, client: httpx.AsyncClient, every_s: float, timeout: httpx.Timeout
    ) -> None:
        while True:
            await asyncio.gather(*(self.check(client, u, timeout) for u in self.upstreams))
            await asyncio.sleep(every_s)


def describe(why: object) -> str:
    """A failure as a reason to log and answer with (httpx's timeouts have no text)."""
    if isinstance(why, httpx.TimeoutException):
        kind = {httpx.ConnectTimeout: "no connection", httpx.PoolTimeout: "no free connection"}
        try:
            what = f" to {why.request.method} {why.request.url.path}"
        except RuntimeError:  # raised without its request
            what = ""
        return f"{kind.get(type(why), 'no answer')}{what} within its timeout ({type(why).__name__})"
    return str(why) or type(why).__name__


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a gateway waits on an upstream before failing the request."""

    connect_s: float = 5.0
    first_token_s: float = 25.0  # x2 with the retry: a silent fleet fails within a minute
    token_s: float = 20.0

    @property
    def check(self) -> httpx.Timeout:
        return httpx.Timeout(self.first_token_s, connect=self.connect_s)


class _BeforeFirstToken(Exception):
    """The upstream failed before it sent a token: the request may go to another."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self.tokens = tokens
        self.pool = pool
        self.max_model_len = max_model_len
        self.health_s = health_s
        self.timeouts = timeouts
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
        # Reads are bounded by the first-token and between-token deadlines, not by httpx.
        timeout = httpx.Timeout(None, connect=self.timeouts.connect_s)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
        check = self.timeouts.check
        await asyncio.gather(
            *(self.pool.check(self._client, u, check) for u in self.pool.upstreams)
        )
        self._watch = asyncio.create_task(self.pool.watch(self._client, self.health_s, check))

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
        failures: tuple[str, ...] = ()
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
                self.pool.failed(upstream, exc, generating=True)
                failures = (*failures, f"{upstream.url}: {exc}")
                if len(tried) == 2 or self.pool.choose(key, exclude=tried) is None:
                    raise SwitchboardError(exc.code, "; ".join(failures)) from exc
                log.info("retrying on another upstream: %s: %s", upstream.url, exc)

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
        t = self.timeouts
        first_s = t.first_token_s
        if p.logprobs is None:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        else:  # one answer: it may take every token's time
            body["return_tokens_as_token_ids"] = True  # token texts are ambiguous; ids are not
            first_s += t.token_s * p.max_tokens
        text: list[str] = []
        ids: list[int] = []
        logprobs: list[Any] = []
        finish: Any = "length"
        prompt_tokens = 0
        loop = asyncio.get_running_loop()
        with self.pool.using(upstream):
            try:
                async with (
                    asyncio.timeout(first_s) as deadline,
                    self._client.stream(
                        "POST", f"{upstream.url}/v1/completions", json=body
                    ) as answer,
                ):
                    if answer.status_code != 200:
                        await answer.aread()
                        raise refusal(upstream.url, answer)
                    async for event in events(answer, self.tokens.vocab_size):
                        choice = event.choice
                        new = choice.token_ids or []
                        text.append(choice.text or "")
                        ids.extend(new)
                        if choice.logprobs is not None:
                            logprobs.append(choice.logprobs)
                        if on_token is not None:
                            for token in new:
                                on_token(token)
                        finish = choice.finish_reason or finish
                        if event.usage is not None:
                            prompt_tokens = event.usage.prompt_tokens
                        deadline.reschedule(loop.time() + t.token_s)
                steps = logprobs_of(logprobs, p.logprobs) if p.logprobs is not None else None
            except TimeoutError as exc:
                silence = f"{first_s:g} s for a first token" if not ids else f"{t.token_s:g} s"
                self._fail(
                    upstream, ids, ErrorCode.UPSTREAM_TIMEOUT, f"sent nothing in {silence}", exc
                )
            except httpx.TransportError as exc:
                self._fail(upstream, ids, ErrorCode.UNAVAILABLE, describe(exc), exc)
            except BadAnswer as exc:
                self._fail(upstream, ids, ErrorCode.BAD_UPSTREAM, str(exc), exc)
        return Generation(
            "".join(text), tuple(ids), prompt_tokens, finish, steps, tuple(prompt_ids)
        )

    def _fail(
        self, upstream: Upstream, ids: list[int], code: ErrorCode, why: str, exc: Exception
    ) -> NoReturn:
        """Before a token: another upstream may take the request. After: the request fails,
        and the upstream leaves the rotation until a generation succeeds there again."""
        if not ids:
            raise _BeforeFirstToken(code, why) from exc
        self.pool.failed(upstream, why, generating=True)
        raise SwitchboardError(code, f"upstream {upstream.url} failed mid-answer: {why}") from exc


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
