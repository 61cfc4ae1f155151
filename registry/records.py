"""Plain records the registry hands out: what other layers name without touching SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version as listings show it (the manifest holds the rest)."""

    name: str
    version: int
    method: str
    rank: int | None
    base_fingerprint: str
    served_name: str
    content_digest: str
    created_at: datetime
    parent: str | None
    aliases: tuple[str, ...] = ()
    deleted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "method": self.method,
            "rank": self.rank,
            "base_fingerprint": self.base_fingerprint,
            "served_name": self.served_name,
            "content_digest": self.content_digest,
            "created_at": self.created_at.isoformat(),
            "parent": self.parent,
            "aliases": list(self.aliases),
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class VersionDetail:
    """A version with what an operator's overview adds to its listing: stored bytes, the
    base's name, the training metrics and description from its manifest."""

    info: VersionInfo
    size: int
    base_id: str
    metrics: dict[str, float]
    description: str


@dataclass(frozen=True, slots=True)
class AdapterSummary:
    name: str
    versions: int
    latest: int | None
    aliases: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "latest": self.latest,
            "aliases": self.aliases,
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ref: str
    problems: tuple[str, ...]
    repaired: tuple[str, ...] = ()  # what was repaired on the way
    notes: tuple[str, ...] = ()  # what could not be checked here, and why

    @property
    def ok(self) -> bool:
        return not self.problems
