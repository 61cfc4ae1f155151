"""Engines for the registry database: SQLite (default) or PostgreSQL, same code above."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE = "switchboard_write"
_SQLITE_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# What SQLite says of a file that is not (or no longer) a database it can read.
_DAMAGED = ("file is not a database", "malformed", "file is encrypted")


def open_engine(url: str) -> Engine:
    """An engine for the registry database (its schema is `registry.migrate`'s business).

    On SQLite, writes take the database lock when their transaction starts (`BEGIN
    IMMEDIATE`), so two processes publishing at once queue on the busy timeout instead of
    failing on a lock upgrade. Reads run in autocommit: each is one atomic statement, and
    in WAL mode never blocks a writer.
    """
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ValueError, ImportError) as exc:  # unparsed; no such dialect, driver
        scheme = url.partition("://")[0] if "://" in url else "?"  # the rest may hold a password
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT,
            f"registry database URL ({scheme}://…) is not one SQLAlchemy can use: {exc}; use "
            "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB",
        ) from None
    return engine


def unusable(url: str, exc: DBAPIError) -> SwitchboardError:
    """The database's failure as one line: which database, what is wrong, what to do."""
    parsed = make_url(url)
    reason = " ".join(str(exc.orig or exc).split())
    if parsed.get_backend_name() == "sqlite":
        where = parsed.database or ":memory:"
        if any(marker in reason.lower() for marker in _DAMAGED):
            return SwitchboardError(
                ErrorCode.DATABASE,
                f"the registry database {where} is damaged ({reason}): restore it from a "
                "backup (moving it aside starts an empty registry, whose `gc` would then "
                "remove every stored file)",
            )
        return SwitchboardError(
            ErrorCode.DATABASE, f"cannot use the registry database {where}: {reason}"
        )
    where = parsed.render_as_string(hide_password=True)
    return SwitchboardError(
        ErrorCode.DATABASE,
        f"cannot use the registry database {where}: {reason[:300]} (is the server up, and "
        "SWITCHBOARD_DATABASE_URL right?)",
    )


def writer(engine: Engine) -> Engine:
    return engine.execution_options(**{WRITE: True})


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # pysqlite's own BEGIN handling is off; see _sqlite_begin
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get(WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def as_utc(value: datetime) -> datetime:
    """A timestamp read back from the database, zone restored (SQLite drops it)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def retry_conflicts(write: Callable[[], T], what: str, attempts: int = 30) -> T:
    """Run a write transaction, again while it loses a race.

    A unique-key clash (a concurrent writer took the version number, created the adapter,
    the alias or the example) means: look again and retry; so does SQLite's lock held past
    the busy timeout. Anything else is a real error and propagates at once.
    """
    for attempt in range(attempts):
        try:
            return write()
        except (IntegrityError, OperationalError) as exc:
            code = getattr(exc.orig, "sqlite_errorcode", None)  # may be an extended code
            busy = code is not None and code & 0xFF in _SQLITE_BUSY
            if not (isinstance(exc, IntegrityError) or busy) or attempt == attempts - 1:
                raise
            log.debug("%s retried: %s", what, exc.__class__.__name__)
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")
