"""The registry database's schema version: Alembic migrations (`registry/migrations`).

A new, empty database is created at the newest revision. Any other database must already be
there: Switchboard never creates or alters tables in an existing registry behind the
operator's back, it refuses with one line naming `switchboard registry upgrade`, which applies
the pending migrations in one transaction (PostgreSQL; SQLite alters tables in batch mode).
A registry from before migrations (tables, no revision) is the baseline revision.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from switchboard_lora.registry.db import retry_conflicts, unusable, writer
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.schema import Base

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the schema releases created before migrations existed
_LOCK_KEY = 0x5357424D  # PostgreSQL advisory lock: one migrating process at a time


def _config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None))


def head() -> str:
    """The newest revision this Switchboard knows."""
    revision: str | None = _scripts().get_current_head()
    assert revision is not None  # the baseline exists
    return revision


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: str | None  # the database's revision; None: none recorded
    has_tables: bool  # any of the registry's tables
    head: str

    @property
    def empty(self) -> bool:
        return self.current is None and not self.has_tables

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_state(conn: Any) -> SchemaState:
    from alembic.migration import MigrationContext

    tables = set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
    current = MigrationContext.configure(conn).get_current_revision()
    return SchemaState(current, bool(tables), head())


def _known(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


@contextmanager
def _locked(engine: Engine) -> Iterator[Any]:
    """A write transaction that no other migrating process shares (SQLite: BEGIN IMMEDIATE;
    PostgreSQL: an advisory lock held to its end)."""
    with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        yield conn


def _refusal(state: SchemaState) -> SwitchboardError:
    if state.current is not None and not _known(state.current):
        return SwitchboardError(
            ErrorCode.SCHEMA,
            f"the registry database is at schema revision {state.current}, newer than this "
            f"Switchboard knows ({state.head}): upgrade Switchboard",
        )
    at = state.current or "from before migrations"
    return SwitchboardError(
        ErrorCode.SCHEMA,
        f"the registry database is at schema revision {at}, this Switchboard needs "
        f"{state.head}: run `switchboard registry upgrade`",
    )


def ensure_schema(engine: Engine) -> None:
    """Create a new, empty database at the newest revision; refuse one that is not there.

    Processes opening a new SQLite file at once race on switching it to WAL, which SQLite
    answers with "locked" at once rather than waiting: such a loss is retried."""
    try:
        state = retry_conflicts(lambda: _ensure(engine), f"opening {engine.url!r}")
    except DBAPIError as exc:
        raise unusable(engine.url.render_as_string(hide_password=False), exc) from None
    if not state.up_to_date:
        raise _refusal(state)


def _ensure(engine: Engine) -> SchemaState:
    """The schema's state; a new, empty database created at the newest revision first."""
    with engine.connect() as conn:
        state = schema_state(conn)
    if not state.empty:
        return state
    with _locked(engine) as conn:
        state = schema_state(conn)  # another process may have created it meanwhile
        if state.empty:
            from alembic import command

            command.upgrade(_config(conn), "head")
            log.info("registry database created at schema revision %s", state.head)
            return schema_state(conn)
    return state


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply pending migrations, in one transaction. Returns (revision before, after)."""
    from alembic import command

    with _locked(engine) as conn:
        state = schema_state(conn)
        if state.current is not None and not _known(state.current):
            raise _refusal(state)
        config = _config(conn)
        if state.current is None and state.has_tables:
            command.stamp(config, BASELINE)  # a registry from before migrations
        command.upgrade(config, "head")
    before = state.current or (BASELINE if state.has_tables else None)
    log.info("registry schema upgraded from %s to %s", before, state.head)
    return before, state.head
