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

from sqlalchemy import Engine, select, update
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
    ) -> list[LoggedDecision]:
        """Logged decisions, most uncertain first (smallest margin; unknown margins last);
        unlabelled ones unless `labelled`."""
        if limit < 1:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "limit must be at least 1")
        query = select(RouteDecisionRow)
        if not labelled:
            query = query.where(RouteDecisionRow.label.is_(None))
        if uncertain:
            query = query.where(RouteDecisionRow.margin < UNCERTAIN_MARGIN)
        if since is not None:  # a time without a zone is UTC
            since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
            query = query.where(RouteDecisionRow.created_at >= since)
        unknown_last = RouteDecisionRow.margin.is_(None)
        query = query.order_by(unknown_last, RouteDecisionRow.margin, RouteDecisionRow.id)
        with Session(self._engine) as session:
            return [_logged(r) for r in session.scalars(query.limit(limit))]

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
