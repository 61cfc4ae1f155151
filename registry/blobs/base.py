"""What every blob store is: the interface, the listing record, the integrity error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

# Seconds an object store may stay silent before a call is retried (and, retries included,
# fails as unavailable): the registry setting's default.
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class StoredBlob:
    key: str  # a blob's sha256, or the name of a leftover partial upload
    size: int
    modified: float  # seconds since the epoch


class BlobStore(Protocol):
    url: str  # where the store is, for messages

    def put(self, source: Path) -> tuple[str, int]:
        """Store a file's bytes (idempotent; a damaged copy is replaced): (sha256, size)."""
        ...

    def check(self, sha256: str, size: int) -> str | None:
        """None if the blob is intact (its bytes hashed), else what is wrong with it."""
        ...

    def fetch(self, sha256: str, size: int, dest: Path) -> None:
        """Copy a blob to `dest`, verifying it on the way (an integrity error otherwise)."""
        ...

    def stored(self) -> list[StoredBlob]:
        """Every blob, and every leftover of an interrupted upload."""
        ...

    def delete(self, key: str) -> None: ...


def integrity(sha256: str, problem: str) -> SwitchboardError:
    return SwitchboardError(ErrorCode.INTEGRITY, f"stored file {sha256[:12]}… is {problem}")
