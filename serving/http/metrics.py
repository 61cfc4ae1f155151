"""Prometheus metrics per adapter and routing outcome (one registry per app, so several apps
in one process, as in tests, never share counters)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from switchboard_lora.serving.engines.interface import Generation
    from switchboard_lora.serving.served import Served

_LABELS = ("adapter", "decision")


def _labels(served: Served) -> tuple[str, str]:
    return (served.version.ref if served.version else "base", served.decision.kind)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "switchboard_requests", "Completed generation requests", _LABELS, registry=self.registry
        )
        self.latency = Histogram(
            "switchboard_request_seconds",
            "Time from accepted request to last token",
            _LABELS,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "switchboard_prompt_tokens", "Prompt tokens", _LABELS, registry=self.registry
        )
        self.completion_tokens = Counter(
            "switchboard_completion_tokens", "Generated tokens", _LABELS, registry=self.registry
        )
        self.first_token = Histogram(
            "switchboard_first_token_seconds",
            "Time from accepted request to the first streamed token",
            _LABELS,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.errors = Counter(
            "switchboard_request_errors",
            "Accepted generation requests that failed",
            _LABELS,
            registry=self.registry,
        )

    def observe(self, served: Served, seconds: float, generation: Generation) -> None:
        labels = _labels(served)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        self.prompt_tokens.labels(*labels).inc(generation.prompt_tokens)
        self.completion_tokens.labels(*labels).inc(len(generation.token_ids))

    def started(self, served: Served, seconds: float) -> None:
        """A stream's first token, `seconds` after the request was accepted."""
        self.first_token.labels(*_labels(served)).observe(seconds)

    def failed(self, served: Served) -> None:
        self.errors.labels(*_labels(served)).inc()

    def watch(self, collector: Collector) -> None:
        """An engine's own collector, read at each scrape."""
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
