"""The review loop's log: routing decisions the server recorded, and the labels operators give
them. A label makes the request an example of the route it names, so the router learns it on
its next decision (the examples are what `RouteStore` keeps; the change token moves).

Only what the server was told to log is here (`SWITCHBOARD_ROUTE_LOG`): request text is kept
only by an operator's choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.orm import Session

from switchboard_lora.registry.db import as_utc
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.queries import resolve
from switchboard_lora.registry.refs import AdapterRef
from switchboard_lora.registry.route_store import BASE_ROUTE, RouteStore, validate_route
from switchboard_lora.registry.schema import RouteDecisionRow

# A decision whose margin (how far its in-domain score is from its threshold, or its best
# route's score from the runner-up's, whichever is nearer) is below this is "uncertain".
UNCERTAIN_MARGIN = 0.2
_SCORES_KEPT = 8
ActivityRow = tuple[str, str, int, int]  # hour, route, decisions, uncertain ones
_ClosedHours = tuple[datetime, datetime, float, list[ActivityRow]]  # from, until, at, rows
_CLOSED_HOURS_KEPT_S = 300.0  # how long counts of ended hours are reused before a recount


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    id: int
    created_at: datetime
    text: str
    kind: str
    route: str
    in_domain: float | None
    margin: float | None
    scores: dict[str, float]
    label: str | None
    labelled_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "text": self.text,
            "decision": self.kind,
            "route": self.route,
            "in_domain": self.in_domain,
            "margin": self.margin,
            "scores": self.scores,
            "label": self.label,
            "labelled_at": self.labelled_at.isoformat() if self.labelled_at else None,
        }


def _utc(moment: datetime) -> datetime:
    """A time without a zone is UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _hour_key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H")


def _logged(row: RouteDecisionRow) -> LoggedDecision:
    return LoggedDecision(
        row.id,
        as_utc(row.created_at),
        row.text,
        row.kind,
        row.route,
        row.in_domain,
        row.margin,
        json.loads(row.scores),
        row.label,
        as_utc(row.labelled_at) if row.labelled_at else None,
    )


class DecisionLog:
    def __init__(self, engine: Engine, writer: Engine, routes: RouteStore) -> None:
        self._engine = engine
        self._writer = writer
        self._routes = routes
        self._closed_hours: _ClosedHours | None = None  # activity's counts of ended hours

    def record(
        self,
        text: str,
        kind: str,
        route: str,
        in_domain: float | None,
        margin: float | None,
        scores: dict[str, float],
    ) -> int:
        """Log one decision; returns its id."""
        best = dict(list(scores.items())[:_SCORES_KEPT])
        row = RouteDecisionRow(
            created_at=datetime.now(UTC),
            text=text,
            kind=kind,
            route=route,
            in_domain=None if in_domain is None else round(in_domain, 6),  # as decisions show
            margin=None if margin is None else round(margin, 6),
            scores=json.dumps({k: round(v, 6) for k, v in best.items()}),
        )
        with Session(self._writer) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def review(
        self,
        *,
        uncertain: bool = False,
        since: datetime | None = None,
        labelled: bool = False,
        limit: int = 50,
        route: str | None = None,
        newest: bool = False,
    ) -> list[LoggedDecision]:
        """Logged decisions, most uncertain first (smallest margin; unknown margins last) or
        `newest` first; unlabelled ones unless `labelled`; only those routed to `route` if
        given."""
        if limit < 1:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "limit must be at least 1")
        query = select(RouteDecisionRow)
        if not labelled:
            query = query.where(RouteDecisionRow.label.is_(None))
        if uncertain:
            query = query.where(RouteDecisionRow.margin < UNCERTAIN_MARGIN)
        if since is not None:
            query = query.where(RouteDecisionRow.created_at >= _utc(since))
        if route is not None:
            query = query.where(RouteDecisionRow.route == validate_route(route))
        if newest:
            query = query.order_by(RouteDecisionRow.id.desc())
        else:
            unknown_last = RouteDecisionRow.margin.is_(None)
            query = query.order_by(unknown_last, RouteDecisionRow.margin, RouteDecisionRow.id)
        with Session(self._engine) as session:
            return [_logged(r) for r in session.scalars(query.limit(limit))]

    def activity(self, since: datetime) -> list[ActivityRow]:
        """Decisions per hour (UTC, "YYYY-MM-DD HH") and route from the hour `since` falls in:
        (hour, route, decisions, uncertain ones), oldest first. Counted by the database.

        Decisions are only ever appended, stamped with the time they were logged, so an hour
        that has ended keeps its counts: those are kept for `_CLOSED_HOURS_KEPT_S` and only
        the hours since are counted again (a console page asks every few seconds)."""
        start = _utc(since).replace(minute=0, second=0, microsecond=0)
        now = datetime.now(UTC)
        this_hour = now.replace(minute=0, second=0, microsecond=0)
        kept = self._closed_hours
        fresh = kept is not None and now.timestamp() - kept[2] < _CLOSED_HOURS_KEPT_S
        if kept is not None and fresh and kept[0] <= start and kept[1] == this_hour:
            closed = [row for row in kept[3] if row[0] >= _hour_key(start)]
            return closed + self._count(this_hour)
        rows = self._count(start)
        closed = [row for row in rows if row[0] < _hour_key(this_hour)]
        self._closed_hours = (start, this_hour, now.timestamp(), closed)
        return rows

    def _count(self, start: datetime) -> list[ActivityRow]:
        created = RouteDecisionRow.created_at
        if self._engine.dialect.name == "postgresql":
            hour: Any = func.to_char(func.timezone("UTC", created), "YYYY-MM-DD HH24")
        else:  # SQLite keeps UTC times as ISO text
            hour = func.substr(created, 1, 13)
        uncertain = func.sum(case((RouteDecisionRow.margin < UNCERTAIN_MARGIN, 1), else_=0))
        query = (
            select(hour.label("hour"), RouteDecisionRow.route, func.count(), uncertain)
            .where(created >= start)
            .group_by("hour", RouteDecisionRow.route)
            .order_by("hour", RouteDecisionRow.route)
        )
        with self._engine.connect() as conn:
            return [(str(h), r, int(n), int(u or 0)) for h, r, n, u in conn.execute(query)]

    def get(self, decision_id: int) -> LoggedDecision:
        with Session(self._engine) as session:
            row = session.get(RouteDecisionRow, decision_id)
            if row is None:
                raise SwitchboardError(
                    ErrorCode.NOT_FOUND, f"no logged routing decision has id {decision_id}"
                )
            return _logged(row)

    def check_route(self, route: str) -> str:
        """`base`, or the name of an adapter with a live version (resolved as the router
        resolves routes): what a label may name."""
        validate_route(route)
        if route == BASE_ROUTE:
            return route
        with self._engine.connect() as conn:
            try:
                resolve(conn, AdapterRef.parse(route))
            except SwitchboardError as exc:
                raise SwitchboardError(
                    ErrorCode.NOT_FOUND,
                    f"no route named {route!r} ({exc.message}): a label names an adapter "
                    "with a live version, or base",
                ) from None
        return route

    def _checked(self, decision_id: int, route: str) -> LoggedDecision:
        self.check_route(route)
        return self.get(decision_id)

    def _apply(self, decision: LoggedDecision, route: str, source: str) -> LoggedDecision:
        self._routes.add_examples(route, [decision.text], source)
        now = datetime.now(UTC)
        with Session(self._writer) as session, session.begin():
            session.execute(
                update(RouteDecisionRow)
                .where(RouteDecisionRow.id == decision.id)
                .values(label=route, labelled_at=now)
            )
        return replace(decision, label=route, labelled_at=now)

    def label(self, decision_id: int, route: str, source: str) -> LoggedDecision:
        """Label a logged decision with the route it should have taken: its text becomes an
        example of that route (live), and the decision leaves the review queue."""
        return self._apply(self._checked(decision_id, route), route, source)

    def label_many(self, labels: list[tuple[int, str]], source: str) -> list[LoggedDecision]:
        """Label several at once; every id and route is checked before any is applied."""
        checked: list[tuple[LoggedDecision, str]] = []
        problems = []
        for decision_id, route in labels:
            try:
                checked.append((self._checked(decision_id, route), route))
            except SwitchboardError as exc:
                problems.append(exc.message)
        if problems:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"{len(problems)} bad label(s), none applied: " + "; ".join(problems),
            )
        return [self._apply(decision, route, source) for decision, route in checked]
