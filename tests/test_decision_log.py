"""The decision log's reads for the console: filters, order, and counts per hour and route
(on SQLite and PostgreSQL: the hour is computed in SQL, differently by each)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from switchboard_lora.registry import Registry


@pytest.fixture
def log_registry(database_url: str, home: Path) -> Iterator[Registry]:
    registry = Registry(database_url, home)
    yield registry
    registry.close()


def _backdate(database_url: str, ids: list[int], hours: float) -> None:
    """Move decisions into the past (the log stamps the present; traffic spans hours)."""
    at = datetime.now(UTC) - timedelta(hours=hours)
    with create_engine(database_url).begin() as conn:
        for i in ids:
            conn.execute(
                text("update route_decisions set created_at = :at where id = :id"),
                {"at": at, "id": i},
            )


def test_review_filters_by_route_and_orders_newest_or_least_certain(
    log_registry: Registry,
) -> None:
    log = log_registry.decisions
    ids = [
        log.record(f"q{i}", "adapter", route, None, margin, {route: 0.5})
        for i, (route, margin) in enumerate(
            [("math", 0.3), ("sql", 0.05), ("math", 0.01), ("math", None), ("base", 0.5)]
        )
    ]
    assert [d.id for d in log.review(route="math")] == [ids[2], ids[0], ids[3]]
    assert [d.id for d in log.review(route="math", newest=True)] == [ids[3], ids[2], ids[0]]
    assert [d.id for d in log.review(newest=True, limit=2)] == [ids[4], ids[3]]
    assert log.review(route="code") == []


def test_activity_counts_decisions_per_hour_and_route_and_the_uncertain_ones(
    log_registry: Registry, database_url: str
) -> None:
    log = log_registry.decisions
    old = [log.record("a", "adapter", "math", None, m, {"math": 0.5}) for m in (0.1, 0.5, 0.05)]
    older = [log.record("b", "base", "base", None, 0.9, {"base": 0.5})]
    _backdate(database_url, old, 2)
    _backdate(database_url, older, 30)
    log.record("c", "adapter", "sql", None, 0.1, {"sql": 0.5})
    now = datetime.now(UTC)
    hour = lambda h: (now - timedelta(hours=h)).strftime("%Y-%m-%d %H")  # noqa: E731
    day = log.activity(now - timedelta(hours=24))
    assert day == [(hour(2), "math", 3, 2), (hour(0), "sql", 1, 1)]
    # The hour `since` falls in counts whole; an earlier window reaches the older decision.
    assert log.activity(now - timedelta(hours=2))[0] == (hour(2), "math", 3, 2)
    assert log.activity(now - timedelta(hours=31))[0] == (hour(30), "base", 1, 0)
    # New decisions in this hour show at once; ended hours keep their counts.
    log.record("d", "adapter", "sql", None, 0.6, {"sql": 0.5})
    log.record("e", "adapter", "math", None, 0.6, {"math": 0.5})
    again = log.activity(now - timedelta(hours=24))
    assert again == [(hour(2), "math", 3, 2), (hour(0), "math", 1, 0), (hour(0), "sql", 2, 1)]
