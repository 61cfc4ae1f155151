"""Pointing an alias at a version inside a caller's transaction (set_alias, promotions)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from switchboard_lora.registry.schema import AliasRow


def point_alias(session: Session, adapter_id: int, alias: str, version_id: int) -> None:
    """Create or move `alias` of the adapter to `version_id` (one row: readers see old or new)."""
    existing = session.get(AliasRow, (adapter_id, alias), with_for_update=True)
    now = datetime.now(UTC)
    if existing is None:
        session.add(
            AliasRow(adapter_id=adapter_id, alias=alias, version_id=version_id, updated_at=now)
        )
    else:
        existing.version_id = version_id
        existing.updated_at = now
