"""An A/B test of adapter versions as a record, and how a request is given an arm.

While an experiment runs, every request that resolves to its adapter (by name, or through
routing) is given one of its arms: sticky per key when the request carries one (a hash of
experiment and key, so a user keeps their arm across requests and replicas), uniform per
request otherwise.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

BASE_ARM = "base"
SCORE_RANGE = (0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Arm:
    position: int
    ref: str  # "legal:3" (a pinned version) or "base"
    share: float

    @property
    def is_base(self) -> bool:
        return self.ref == BASE_ARM


@dataclass(frozen=True, slots=True)
class Experiment:
    id: int
    name: str
    adapter: str
    key_header: str | None
    arms: tuple[Arm, ...]
    started_at: datetime
    stopped_at: datetime | None
    outcome: str | None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def assign(self, key: str | None, exclude: frozenset[int] = frozenset()) -> Arm | None:
        """The arm for a request: sticky per key (a hash of experiment and key), uniform
        without one. Arms in `exclude` (out of rotation) are skipped, shares renormalised."""
        live = [arm for arm in self.arms if arm.position not in exclude]
        if not live:
            return None
        if key is None:
            point = random.random()
        else:
            digest = hashlib.sha256(f"{self.name}\0{key}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64
        total = sum(arm.share for arm in live)
        cumulative = 0.0
        for arm in live:
            cumulative += arm.share / total
            if point < cumulative:
                return arm
        return live[-1]  # rounding at the top end

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "adapter": self.adapter,
            "key": f"header:{self.key_header}" if self.key_header else None,
            "arms": [{"ref": a.ref, "share": a.share} for a in self.arms],
            "started_at": self.started_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "outcome": self.outcome,
            "running": self.running,
        }


@dataclass(frozen=True, slots=True)
class Exposure:
    position: int
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    thumbs_up: tuple[bool, ...]
    scores: tuple[float, ...]


def parse_key(key: str | None) -> str | None:
    """`header:X-User-Id` -> the header's name (lower case, as HTTP compares them)."""
    if key is None:
        return None
    kind, _, header = key.partition(":")
    if kind != "header" or not header.strip():
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT, f"the key must look like header:X-User-Id, not {key!r}"
        )
    return header.strip().lower()
