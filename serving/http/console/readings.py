"""The server's own counters, read back for the console: per adapter (requests, tokens, errors,
latency and time-to-first-token quantiles) and per upstream of a gateway. Read from the same
Prometheus registry `/metrics` renders, so the console and a scraper never disagree."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry


@dataclass(slots=True)
class Traffic:
    """One adapter's served traffic since the server started (all decisions together)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    latency: dict[float, float] = field(default_factory=dict)  # bucket bound -> count
    first_token: dict[float, float] = field(default_factory=dict)

    def quantile(self, which: str, q: float) -> float | None:
        """The histogram bucket bound that `q` of the observations fall within (an upper
        bound, as Prometheus' buckets give it); None without observations or beyond the top
        bucket."""
        buckets = sorted(getattr(self, which).items())
        total = buckets[-1][1] if buckets else 0
        if not total:
            return None
        bound = next(bound for bound, count in buckets if count >= q * total)
        return None if math.isinf(bound) else bound  # beyond the top bucket: not a figure

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for which in ("latency", "first_token"):
            data.pop(which)
            data[f"{which}_p50_s"] = self.quantile(which, 0.5)
            data[f"{which}_p99_s"] = self.quantile(which, 0.99)
        return data


_COUNTERS = {
    "switchboard_requests_total": "requests",
    "switchboard_prompt_tokens_total": "prompt_tokens",
    "switchboard_completion_tokens_total": "completion_tokens",
    "switchboard_request_errors_total": "errors",
}
_HISTOGRAMS = {
    "switchboard_request_seconds_bucket": "latency",
    "switchboard_first_token_seconds_bucket": "first_token",
}


def traffic(registry: CollectorRegistry) -> dict[str, Traffic]:
    """Per adapter ref ("base" for the plain base): what it served."""
    found: dict[str, Traffic] = defaultdict(Traffic)
    for metric in registry.collect():
        for sample in metric.samples:
            adapter = sample.labels.get("adapter")
            if adapter is None:
                continue
            if sample.name in _COUNTERS:
                name = _COUNTERS[sample.name]
                setattr(found[adapter], name, getattr(found[adapter], name) + int(sample.value))
            elif sample.name in _HISTOGRAMS:
                bound = float(sample.labels["le"])
                buckets = getattr(found[adapter], _HISTOGRAMS[sample.name])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return dict(found)


def upstreams(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """A gateway's upstreams: health, load, failed requests, requests and their seconds."""
    names = {
        "switchboard_upstream_healthy": "healthy",
        "switchboard_upstream_in_flight": "in_flight",
        "switchboard_upstream_errors_total": "errors",
        "switchboard_upstream_seconds_count": "requests",
        "switchboard_upstream_seconds_sum": "seconds",
    }
    found: dict[str, dict[str, float]] = defaultdict(dict)
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name in names and "upstream" in sample.labels:
                found[sample.labels["upstream"]][names[sample.name]] = sample.value
    return dict(found)


def live(registry: CollectorRegistry) -> dict[str, Any]:
    """Cumulative counters with the time they were read: the page turns two into rates."""
    return {
        "time": time.time(),
        "adapters": {ref: t.to_json() for ref, t in sorted(traffic(registry).items())},
        "upstreams": upstreams(registry),
    }
