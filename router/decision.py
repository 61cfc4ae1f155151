"""The routing decision (base, one adapter version, or a weighted mix, with the scores behind
it) and the policy that turns scores into one: pick the best route, gate it by its in-domain
score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.router.gate import DEFAULT_THRESHOLD

Kind = Literal["base", "adapter", "mix"]


@dataclass(frozen=True, slots=True)
class Choice:
    """One adapter version in a decision, with its weight (1.0 unless mixed)."""

    version: VersionInfo | None  # None only for routes read from a file (no registry)
    route: str
    weight: float = 1.0

    @property
    def ref(self) -> str:
        return self.version.ref if self.version else self.route

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "served_name": self.version.served_name if self.version else None,
            "weight": round(self.weight, 6),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Kind
    choices: tuple[Choice, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)  # route -> score, best first
    in_domain: float | None = None  # the best route's in-domain score (None: not routed)
    margin: float | None = None  # how near it came to going otherwise (small: uncertain)
    reason: str = ""
    model: str = "auto"  # what the caller asked for
    truncated: bool = False
    tokens: int | None = None

    @property
    def route(self) -> str:
        """The route it went to: `base`, or the first (heaviest) adapter's route."""
        return self.choices[0].route if self.choices else BASE_ROUTE

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "decision": self.kind,
            "route": self.route,
            "adapters": [c.to_json() for c in self.choices],
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "in_domain": None if self.in_domain is None else round(self.in_domain, 6),
            "margin": None if self.margin is None else round(self.margin, 6),
            "reason": self.reason,
            "truncated": self.truncated,
            "tokens": self.tokens,
        }


@dataclass(frozen=True, slots=True)
class Policy:
    threshold: float = DEFAULT_THRESHOLD  # an in-domain score below it (or a route's own): base
    top_k: int = 1  # >1: mix up to k LoRA adapters of one base
    temperature: float = 1.0  # of the softmax over log-scores giving a mix's weights

    def limit(self, target: RouteTarget) -> float:
        return self.threshold if target.threshold is None else target.threshold

    def margin(self, ranked: list[tuple[str, float]], gate: float, target: RouteTarget) -> float:
        """How near a decision came to going otherwise: its best route's in-domain score's
        distance from its threshold, or its lead over the runner-up route if nearer."""
        margin = abs(gate - self.limit(target))
        if len(ranked) > 1:
            margin = min(margin, ranked[0][1] - ranked[1][1])
        return margin

    def decide(
        self,
        classes: list[str],
        scores: np.ndarray,
        in_domain: np.ndarray,
        routes: dict[str, RouteTarget],
    ) -> tuple[Kind, tuple[Choice, ...], str]:
        """The best-scoring route, if its in-domain score clears its threshold (else base);
        with top_k > 1, further LoRA routes of the same base that clear theirs, mixed."""
        by_class = dict(zip(classes, scores.tolist(), strict=True))
        gate = dict(zip(classes, in_domain.tolist(), strict=True))
        ranked = sorted((c for c in classes if c != BASE_ROUTE), key=lambda c: -by_class[c])
        if not ranked:
            return "base", (), "no routes"
        top = ranked[0]
        limit = self.limit(routes[top])
        if gate[top] < limit:
            return "base", (), f"{top} in-domain {gate[top]:.3f} < threshold {limit:.3f}"
        chosen = [top]
        first = routes[top]
        if self.top_k > 1 and first.is_lora:
            for other in ranked[1:]:
                target = routes[other]
                if (
                    len(chosen) < self.top_k
                    and target.is_lora
                    and target.base_fingerprint == first.base_fingerprint
                    and gate[other] >= self.limit(target)
                ):
                    chosen.append(other)
        if len(chosen) == 1:
            return "adapter", (Choice(first.version, top),), f"{top} in-domain {gate[top]:.3f}"
        logits = np.log(np.maximum([by_class[c] for c in chosen], 1e-12)) / self.temperature
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        mix = tuple(
            Choice(routes[c].version, c, float(w)) for c, w in zip(chosen, weights, strict=True)
        )
        return "mix", mix, f"{len(chosen)} LoRA routes above their thresholds"


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """Where a route leads and the threshold it was calibrated to, if any."""

    version: VersionInfo | None
    threshold: float | None = None

    @property
    def is_lora(self) -> bool:
        return self.version is not None and self.version.method == "lora"

    @property
    def base_fingerprint(self) -> str | None:
        return self.version.base_fingerprint if self.version else None
