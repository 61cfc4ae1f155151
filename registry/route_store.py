"""What the router keeps in the registry: operator examples and descriptions per route,
calibrated thresholds, and a cheap token that changes whenever anything routing depends on
changes.

A route is named like the adapter it leads to; `base` names the route to no adapter, whose
examples are the negatives (requests that must get the plain base).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from switchboard_lora.registry.db import as_utc
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.refs import validate_name
from switchboard_lora.registry.schema import (
    AliasRow,
    RouteDescriptionRow,
    RouteExampleRow,
    RouteThresholdRow,
    VersionRow,
)

log = logging.getLogger(__name__)

BASE_ROUTE = "base"
MAX_EXAMPLE_CHARS = 20_000
MAX_DESCRIPTION_CHARS = 1_000
_ATTEMPTS = 5


def validate_route(name: str) -> str:
    """`base`, or a valid adapter name."""
    return name if name == BASE_ROUTE else validate_name(name)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RouteExample:
    id: int
    route: str
    text: str
    source: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "route": self.route,
            "text": self.text,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
        }


def _state_query() -> Any:
    """One statement of scalar subqueries: counts catch removals, maxima catch additions."""
    live = VersionRow.deleted_at.is_(None)
    parts = [
        select(func.count(VersionRow.id)).where(live),
        select(func.max(VersionRow.id)),
        select(func.count()).select_from(AliasRow),
        select(func.max(AliasRow.updated_at)),
        select(func.count(RouteExampleRow.id)),
        select(func.max(RouteExampleRow.id)),
        select(func.count()).select_from(RouteThresholdRow),
        select(func.max(RouteThresholdRow.calibrated_at)),
        select(func.count()).select_from(RouteDescriptionRow),
        select(func.max(RouteDescriptionRow.updated_at)),
    ]
    return select(*(part.scalar_subquery() for part in parts))


_STATE = _state_query()


class RouteStore:
    """Examples and thresholds in the registry's database (same engine, same rules)."""

    def __init__(self, engine: Engine, writer: Engine) -> None:
        self._engine = engine
        self._writer = writer

    def state(self) -> tuple[Any, ...]:
        """Equal between two calls exactly when no version, alias, example or threshold
        changed in between (as far as routing can tell)."""
        with self._engine.connect() as conn:
            return tuple(conn.execute(_STATE).one())

    # ---- examples -------------------------------------------------------------------------

    def add_examples(self, route: str, texts: Iterable[str], source: str) -> int:
        """Add examples to a route; ones it already has are skipped. Returns how many were new.

        All or nothing: the rows go in one transaction.
        """
        validate_route(route)
        unique: dict[str, str] = {}
        for text in texts:
            clean = text.strip()
            if not clean:
                raise SwitchboardError(ErrorCode.INVALID_INPUT, "an example is empty")
            if len(clean) > MAX_EXAMPLE_CHARS:
                raise SwitchboardError(
                    ErrorCode.INVALID_INPUT,
                    f"an example has {len(clean)} characters; the limit is {MAX_EXAMPLE_CHARS}",
                )
            unique.setdefault(text_sha256(clean), clean)
        for attempt in range(_ATTEMPTS):
            try:
                with Session(self._writer) as session, session.begin():
                    have = set(
                        session.scalars(
                            select(RouteExampleRow.text_sha256).where(
                                RouteExampleRow.route == route
                            )
                        )
                    )
                    now = datetime.now(UTC)
                    new = [
                        RouteExampleRow(
                            route=route,
                            text=text,
                            text_sha256=sha,
                            source=source[:255],
                            created_at=now,
                        )
                        for sha, text in unique.items()
                        if sha not in have
                    ]
                    session.add_all(new)
                log.info("route %s: %d examples added from %s", route, len(new), source)
                return len(new)
            except IntegrityError:  # the same example added concurrently: look again
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def examples(self, route: str | None = None) -> list[RouteExample]:
        query = select(RouteExampleRow).order_by(RouteExampleRow.id)
        if route is not None:
            query = query.where(RouteExampleRow.route == validate_route(route))
        with Session(self._engine) as session:
            rows = session.scalars(query).all()
            return [
                RouteExample(r.id, r.route, r.text, r.source, as_utc(r.created_at)) for r in rows
            ]

    def remove_examples(self, route: str, ids: Iterable[int] | None = None) -> int:
        """Remove some (by id) or all of a route's examples. Returns how many went."""
        query = delete(RouteExampleRow).where(RouteExampleRow.route == validate_route(route))
        if ids is not None:
            wanted = sorted(set(ids))
            with self._engine.connect() as conn:
                found = set(
                    conn.scalars(
                        select(RouteExampleRow.id).where(
                            RouteExampleRow.route == route, RouteExampleRow.id.in_(wanted)
                        )
                    )
                )
            if missing := [i for i in wanted if i not in found]:
                raise SwitchboardError(
                    ErrorCode.NOT_FOUND,
                    f"route {route} has no example with id {', '.join(map(str, missing))}",
                )
            query = query.where(RouteExampleRow.id.in_(wanted))
        with Session(self._writer) as session, session.begin():
            removed = int(getattr(session.execute(query), "rowcount", 0))
        log.info("route %s: %d examples removed", route, removed)
        return removed

    # ---- descriptions ---------------------------------------------------------------------

    def describe(self, route: str, text: str | None) -> str | None:
        """Set what a route is for, in a sentence (None: remove it); returns what is stored.
        Evidence beside its examples; it overrides the description in the route's manifest."""
        validate_route(route)
        if route == BASE_ROUTE:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, "base takes examples, not a description"
            )
        with Session(self._writer) as session, session.begin():
            session.execute(delete(RouteDescriptionRow).where(RouteDescriptionRow.route == route))
            if text is None:
                return None
            clean = " ".join(text.split())
            if not clean:
                raise SwitchboardError(ErrorCode.INVALID_INPUT, "the description is empty")
            if len(clean) > MAX_DESCRIPTION_CHARS:
                raise SwitchboardError(
                    ErrorCode.INVALID_INPUT,
                    f"the description has {len(clean)} characters; "
                    f"the limit is {MAX_DESCRIPTION_CHARS}",
                )
            session.add(RouteDescriptionRow(route=route, text=clean, updated_at=datetime.now(UTC)))
        return clean

    def descriptions(self) -> dict[str, str]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(RouteDescriptionRow.route, RouteDescriptionRow.text)).all()
        return {route: text for route, text in rows}

    # ---- thresholds -----------------------------------------------------------------------

    def set_thresholds(self, encoder: str, thresholds: dict[str, tuple[float, int]]) -> None:
        """Store `{route: (threshold, held-out examples it was fitted on)}` for the scores they
        were fitted on (`encoder`: an opaque key naming an encoder and its scoring), replacing
        what that key had."""
        for route in thresholds:
            validate_route(route)
        now = datetime.now(UTC)
        with Session(self._writer) as session, session.begin():
            session.execute(delete(RouteThresholdRow).where(RouteThresholdRow.encoder == encoder))
            session.add_all(
                RouteThresholdRow(
                    route=route, encoder=encoder, threshold=t, examples=n, calibrated_at=now
                )
                for route, (t, n) in sorted(thresholds.items())
            )

    def thresholds(self, encoder: str) -> dict[str, float]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(RouteThresholdRow.route, RouteThresholdRow.threshold).where(
                    RouteThresholdRow.encoder == encoder
                )
            ).all()
        return {route: threshold for route, threshold in rows}
