"""The router: embeds a request, scores it against the routes, decides.

Routes come from a source: the registry (live: each decision first asks the registry for
a change token, one cheap query, and rebuilds the index only when it moved) or a routes file.
A rebuild embeds only texts it has not seen (see `cache.py`) and refits the scorer.

Only the first index is built while requests wait. A change refits beside serving, in one
thread at a time: requests that come within `refit_wait_s` of its start wait for it (a
small change is then seen at once, read-your-writes for an operator), later ones are routed
by the previous fit until the new one is ready (100,000 new examples take minutes to embed
on a CPU; no request waits for that).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.refs import AdapterRef
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.registry.store import Registry
from switchboard_lora.router.cache import EmbeddingCache
from switchboard_lora.router.decision import Choice, Decision, Policy, RouteTarget
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.encoder_cache import EncoderModels
from switchboard_lora.router.files import read_routes
from switchboard_lora.router.gate import DEFAULT_THRESHOLD, OpenSetGate
from switchboard_lora.router.general import general_requests, shipped_vectors
from switchboard_lora.router.scorers import Scorer, ScoringMethod, make_scorer
from switchboard_lora.router.settings import RouterSettings

log = logging.getLogger(__name__)

Request = str | Sequence[dict[str, Any]]


# A route's description weighs as much as a quarter of its examples' total (at least one
# example's): chosen on the benchmark sets by the worst of them (README, Benchmarks).
DESCRIPTION_SHARE = 0.25
# How long the requests right after a change wait for its refit before the previous fit
# routes them: a few examples' refit is well within it, 100,000 new ones are not.
REFIT_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Route:
    """A route's material: examples from its version's manifest (kept on disk per version),
    examples an operator added, and a description (what the route is for, in a sentence)."""

    name: str
    target: RouteTarget
    manifest_examples: tuple[str, ...] = ()
    extra_examples: tuple[str, ...] = ()
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.manifest_examples) + len(self.extra_examples)

    @property
    def description_weight(self) -> float:
        return max(1.0, self.size * DESCRIPTION_SHARE / (1 - DESCRIPTION_SHARE))


class RouteSource(Protocol):
    def state(self) -> Hashable: ...

    def load(self, scores_key: str) -> list[Route]: ...

    def resolve(self, ref: str) -> VersionInfo: ...


class RegistryRoutes:
    """Every adapter name with a live version (its `prod` alias, else its latest) is a route,
    unless `accept` turns the version down (e.g. another base, a method the engine lacks).
    Mixtures are derived versions, not domains: they are never routes."""

    def __init__(
        self, registry: Registry, accept: Callable[[VersionInfo], bool] | None = None
    ) -> None:
        self.registry = registry
        self.accept = accept
        # served name -> (routing examples, description, is a mixture)
        self._manifests: dict[str, tuple[tuple[str, ...], str, bool]] = {}
        self._warned: set[str] = set()

    def state(self) -> Hashable:
        return self.registry.routes.state()

    def resolve(self, ref: str) -> VersionInfo:
        return self.registry.resolve(ref)

    def load(self, scores_key: str) -> list[Route]:
        extra: dict[str, list[str]] = {}
        for example in self.registry.routes.examples():
            extra.setdefault(example.route, []).append(example.text)
        thresholds = self.registry.routes.thresholds(scores_key)
        described = self.registry.routes.descriptions()
        routes = []
        for summary in self.registry.list_adapters():
            try:
                version = self.registry.resolve(summary.name)
            except SwitchboardError as exc:  # deleted since the listing
                log.info("route %s skipped: %s", summary.name, exc.message)
                continue
            examples, description, is_mixture = self._manifest(version)
            if is_mixture or (self.accept is not None and not self.accept(version)):
                continue
            route = Route(
                summary.name,
                RouteTarget(version, thresholds.get(summary.name)),
                examples,
                tuple(extra.pop(summary.name, ())),
                described.get(summary.name) or description or None,
            )
            if route.size or route.description:
                routes.append(route)
            else:
                why = "has no routing examples or description: not routed to"
                self._warn(version.ref, f"{version.ref} {why}")
        negatives = tuple(extra.pop(BASE_ROUTE, ()))
        if negatives:
            routes.append(Route(BASE_ROUTE, RouteTarget(None), (), negatives))
        for name in extra:
            self._warn(name, f"examples for {name!r} wait: no servable adapter has that name")
        return routes

    def _manifest(self, version: VersionInfo) -> tuple[tuple[str, ...], str, bool]:
        if version.served_name not in self._manifests:
            manifest = self.registry.manifest(version.ref)
            self._manifests[version.served_name] = (
                tuple(manifest.routing_examples),
                manifest.description.strip(),
                bool(manifest.components),
            )
        return self._manifests[version.served_name]

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)


class FileRoutes:
    """Routes from a routes file (docs/architecture.md), for evaluation without a registry."""

    def __init__(
        self,
        path: Path,
        thresholds: dict[str, float] | None = None,
        descriptions: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.thresholds = thresholds or {}
        self.descriptions = descriptions or {}
        self.examples = read_routes(path)
        if not [name for name in self.examples if name != BASE_ROUTE]:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, f"{path} names no route other than base"
            )

    def state(self) -> Hashable:
        return (self.path, tuple(sorted(self.thresholds.items())))

    def resolve(self, ref: str) -> VersionInfo:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT, f"routes from {self.path} name no versions; use `auto`"
        )

    def load(self, scores_key: str) -> list[Route]:
        return [
            Route(
                name,
                RouteTarget(None, self.thresholds.get(name)),
                (),
                tuple(texts),
                self.descriptions.get(name),
            )
            for name, texts in self.examples.items()
        ]


class _Index:
    """Routes, their fitted scorer and gate; immutable once built (swapped whole on a change)."""

    def __init__(
        self,
        routes: list[Route],
        cache: EmbeddingCache,
        method: ScoringMethod,
        previous: _Index | None = None,
        general: bool = True,
    ) -> None:
        self.routes = {r.name: r for r in routes}
        self.targets = {r.name: r.target for r in routes}
        vectors, labels, weights = [], [], []
        for route in routes:
            key = route.target.version.served_name if route.target.version else None
            vectors.append(cache.vectors(list(route.manifest_examples), version_key=key))
            vectors.append(cache.vectors(list(route.extra_examples)))
            labels += [route.name] * route.size
            weights += [1.0] * route.size
            if route.description:  # evidence beside the examples, weighed as a share of them
                vectors.append(cache.vectors([route.description]))
                labels.append(route.name)
                weights.append(route.description_weight)
        self.scorer: Scorer | None = None
        self.gate: OpenSetGate | None = None
        if labels:
            matrix, tags = np.concatenate(vectors), np.asarray(labels)
            self.scorer = make_scorer(method)
            start = previous.scorer if previous else None  # a change refits from the last fit
            self.scorer.fit(matrix, labels, np.asarray(weights), start)
            self.gate = OpenSetGate(
                {name: matrix[tags == name] for name in self.routes if name != BASE_ROUTE},
                self._general(cache) if general else matrix[:0],
                matrix[tags == BASE_ROUTE],
            )

    @property
    def classes(self) -> list[str]:
        return self.scorer.classes if self.scorer else []

    @staticmethod
    def _general(cache: EmbeddingCache) -> np.ndarray:
        texts, key = general_requests()
        return cache.shared(texts, key, shipped_vectors)  # read once per process


class Router:
    def __init__(
        self,
        source: RouteSource,
        encoder: Encoder,
        policy: Policy | None = None,
        *,
        method: ScoringMethod = "linear",
        cache_dir: Path | None = None,
        refit_wait_s: float = REFIT_WAIT_S,
        general: bool = True,
    ) -> None:
        self.source = source
        self.encoder = encoder
        self.policy = policy or Policy()
        self.method = method
        self.general = general  # the shipped general requests as the gate's base side
        self.cache = EmbeddingCache(encoder, cache_dir)
        self.refit_wait_s = refit_wait_s
        self.rebuilds = 0
        self._lock = threading.Lock()
        self._state: Hashable = object()  # equal to no real state: the first call builds
        self._index: _Index | None = None
        self._refit: threading.Thread | None = None  # the refit under way, if any
        self._refit_deadline = 0.0  # until when requests wait for it (monotonic)
        self._failed: Hashable = object()  # the state whose refit failed: not retried

    def index(self) -> _Index:
        """The current index: built first if there is none; after a change, the new one
        once ready (see the module's note), else the previous one."""
        state = self.source.state()
        with self._lock:
            index = self._index
            if index is None:  # nothing to serve meanwhile: build it now
                index = self._install(self._build(None), state)
            if state == self._state or state == self._failed:
                return index
            if self._refit is None:
                self._refit = threading.Thread(
                    target=self._refit_to,
                    args=(state, self._index),
                    name="router-refit",
                    daemon=True,  # a shutdown does not wait out a long refit
                )
                self._refit_deadline = time.monotonic() + self.refit_wait_s
                self._refit.start()
            refit, wait = self._refit, self._refit_deadline - time.monotonic()
        if wait > 0:
            refit.join(wait)
        return self._index or index  # the new fit, if it is ready

    def refresh(self) -> _Index:
        """The index for the source as it is now, waiting for any refit to finish."""
        while True:
            index = self.index()
            with self._lock:
                refit = self._refit
            if refit is None:
                return index
            refit.join()

    def _build(self, previous: _Index | None) -> _Index:
        routes = self.source.load(self.scores_key)
        return _Index(routes, self.cache, self.method, previous, self.general)

    def _install(self, index: _Index, state: Hashable) -> _Index:
        self._index, self._state = index, state
        self.rebuilds += 1
        log.info("router index: %d classes", len(index.classes))
        return index

    def _refit_to(self, state: Hashable, previous: _Index) -> None:
        started = time.perf_counter()
        try:
            index = self._build(previous)
        except Exception:  # the previous fit keeps serving; the next change tries again
            log.exception("router refit failed: the previous fit keeps routing")
            with self._lock:
                self._failed, self._refit = state, None
            return
        with self._lock:
            self._install(index, state)
            self._refit = None
        log.info("router refit took %.1f s", time.perf_counter() - started)

    @property
    def scores_key(self) -> str:
        """What calibrated thresholds are valid for: this encoder's in-domain scores, from
        this method's choice and this gate (thresholds fitted on another encoder's, method's,
        gate's or general set's scores do not apply)."""
        general = general_requests()[1] if self.general else "no general requests"
        what = f"{self.encoder.identity}/{self.method}/open-set gate/{general}"
        return hashlib.sha256(what.encode()).hexdigest()

    @property
    def routes(self) -> dict[str, Route]:
        return self.index().routes

    def decide(
        self, request: Request, model: str = "auto", mix: Sequence[tuple[str, float]] = ()
    ) -> Decision:
        """`auto` routes; `base` is the base; anything else is an adapter ref, not routed. A
        client's explicit `mix` (refs and weights) is a mix decision, whatever `model` says."""
        if mix:
            choices = tuple(
                Choice(self.source.resolve(str(AdapterRef.parse(ref))), ref, weight)
                for ref, weight in mix
            )
            return Decision("mix", choices, reason="explicit mix", model=model)
        if model == BASE_ROUTE:
            return Decision("base", reason="asked for the base", model=model)
        if model != "auto":
            version = self.source.resolve(str(AdapterRef.parse(model)))
            choice = Choice(version, version.name)
            return Decision("adapter", (choice,), reason="explicit ref", model=model)
        return self.decide_texts([request_text(request)])[0]

    def decide_texts(self, texts: list[str]) -> list[Decision]:
        """Route a batch of requests (one encoder call for all)."""
        prepared = [self.encoder.prepare(t) for t in texts]
        index = self.index()
        if index.scorer is None:
            return [
                Decision("base", reason="no routes", truncated=p.truncated, tokens=p.tokens)
                for p in prepared
            ]
        queries = self.encoder.encode([p.text for p in prepared])
        scores = index.scorer.scores(queries)
        assert index.gate is not None  # built with the scorer
        gates = index.gate.scores(queries, index.classes, scores)
        decisions = []
        for p, row, gate in zip(prepared, scores, gates, strict=True):
            kind, choices, reason = self.policy.decide(index.classes, row, gate, index.targets)
            ranked = dict(
                sorted(zip(index.classes, row.tolist(), strict=True), key=lambda kv: -kv[1])
            )
            routes = [(c, v) for c, v in ranked.items() if c != BASE_ROUTE]
            in_domain = margin = None
            if routes:  # the best route's gate, and how near the decision came to another
                top = routes[0][0]
                in_domain = float(gate[index.classes.index(top)])
                margin = self.policy.margin(routes, in_domain, index.targets[top])
            decisions.append(
                Decision(
                    kind,
                    choices,
                    ranked,
                    in_domain,
                    margin,
                    reason,
                    truncated=p.truncated,
                    tokens=p.tokens,
                )
            )
        return decisions


def request_text(request: Request) -> str:
    """The text routed on: a prompt as is, or a chat's last user message."""
    if isinstance(request, str):
        return request
    for message in reversed(request):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: route on the text parts
            content = " ".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        if isinstance(content, str):
            return content
    raise SwitchboardError(ErrorCode.INVALID_INPUT, "the chat has no user message to route on")


def build_router(
    settings: RouterSettings,
    source: RouteSource,
    home: Path | None = None,
    method: ScoringMethod | None = None,
    device: str = "auto",
) -> Router:
    """A router as the settings describe it (encoder, policy, method). Under `home`, if
    given: pulled encoders (`encoders/`) and the embeddings of manifest examples (`embeddings/`).
    The encoder runs on `device` (the engine's) unless the settings name its own."""
    method = method or settings.router_method
    threshold = settings.router_threshold
    policy = Policy(
        DEFAULT_THRESHOLD if threshold is None else threshold,
        settings.router_top_k,
        settings.router_temperature,
    )
    encoders = EncoderModels(home / "encoders" if home else None)
    return Router(
        source,
        Encoder(encoders.get(settings.encoder), settings.encoder_device or device),
        policy,
        method=method,
        cache_dir=home / "embeddings" if home else None,
        general=settings.router_general,
    )
