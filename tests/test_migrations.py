"""Schema migrations: a new database is created at the newest revision; an older one is
refused until `switchboard registry upgrade`, which keeps every record. On SQLite and on
PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text

from support.paths import SWITCHBOARD
from switchboard_lora.registry import (
    BaseModelInfo,
    ErrorCode,
    ManifestDraft,
    Registry,
    SwitchboardError,
)
from switchboard_lora.registry.db import open_engine, writer
from switchboard_lora.registry.manifest import Component
from switchboard_lora.registry.migrate import BASELINE, _config, head, upgrade
from switchboard_lora.registry.schema import Base


def _fill(registry: Registry, base: BaseModelInfo, lora: Path, lora_2: Path) -> None:
    """A record of every kind the registry keeps."""
    registry.publish(lora, "legal", base)
    registry.publish(lora_2, "legal", base, parent="legal:1")
    registry.publish(
        lora, "blend", base, draft=ManifestDraft(components=[Component(ref="legal:1", weight=0.7)])
    )
    registry.publish(lora_2, "old", base)
    registry.delete("old:1")  # a deleted version
    registry.set_alias("legal", "prod", 1)
    registry.set_alias("legal", "canary", 2)
    registry.routes.add_examples("legal", ["Is a verbal contract binding?"], "tests")
    registry.routes.add_examples("base", ["What is the capital of France?"], "tests")
    registry.routes.set_thresholds("encoder-x", {"legal": (0.31, 12)})
    experiment = registry.experiments.create(
        "legal-ab", "legal", [("legal:1", 0.5), ("legal:2", 0.5)], key="header:X-User"
    )
    registry.experiments.record("resp-1", experiment, experiment.arms[1], 0.25, 11, 7)
    registry.experiments.feedback("resp-1", thumbs_up=True, score=0.8, label="good")
    logged = registry.decisions.record(
        "Can a landlord keep my deposit?", "adapter", "legal", 0.93, 0.4, {"legal": 0.9}
    )
    registry.decisions.label(logged, "legal", "tests")
    registry.routes.describe("legal", "Questions about law: contracts, tenancy, rights.")


# Tables added by 0004: a downgrade below it drops them, rows and all.
LATER_TABLES = {"route_decisions", "route_descriptions"}
# Columns added after the baseline (0005): a downgrade below it drops them.
LATER_COLUMNS = {"experiment_exposures": {"client"}}
Rows = dict[str, list[dict[str, Any]]]


def _dump(engine: Engine, skip: frozenset[str] = frozenset()) -> Rows:
    """Every row of every registry table (but `skip`), of the columns the database has now,
    in a stable order."""
    with engine.connect() as conn:
        schema = inspect(conn)
        dump = {}
        for table in Base.metadata.sorted_tables:
            if table.name in skip:
                continue
            present = {column["name"] for column in schema.get_columns(table.name)}
            rows = conn.execute(select(*(c for c in table.columns if c.name in present)))
            dump[table.name] = sorted((dict(row._mapping) for row in rows), key=repr)
        return dump


def _at_baseline(records: Rows) -> Rows:
    """The rows a downgrade to the baseline keeps: no later table, no later column."""
    return {
        name: [
            {k: v for k, v in row.items() if k not in LATER_COLUMNS.get(name, ())} for row in rows
        ]
        for name, rows in records.items()
        if name not in LATER_TABLES
    }


def _after_downgrade(records: Rows, to: str) -> Rows:
    """The rows left after a downgrade to `to` and back up: later tables come back empty."""
    dropped = LATER_TABLES if to < "0004" else set()
    return {name: [] if name in dropped else rows for name, rows in records.items()}


def _filled(
    database_url: str, home: Path, base: BaseModelInfo, lora: Path, lora_2: Path
) -> tuple[Engine, Rows]:
    """A registry at head holding every kind of record: its engine, and every row it holds."""
    registry = Registry(database_url, home)
    _fill(registry, base, lora, lora_2)
    registry.close()
    engine = open_engine(database_url)
    return engine, _dump(engine)


def _to(engine: Engine, revision: str) -> None:
    from alembic import command

    with writer(engine).begin() as conn:
        command.downgrade(_config(conn), revision)


def _indexes(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {i["name"] for i in inspect(conn).get_indexes(table) if i["name"]}


def _cli(database_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWITCHBOARD, "--home", str(home), "--database-url", database_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )


def test_a_new_database_is_created_at_the_newest_revision(database_url: str, home: Path) -> None:
    Registry(database_url, home).close()
    engine = open_engine(database_url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head() == "0005"
    assert "ix_route_examples_route" not in _indexes(engine, "route_examples")
    engine.dispose()
    Registry(database_url, home).close()  # and opens again as it is
    result = _cli(database_url, home, "registry", "upgrade", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"from": "0005", "to": "0005", "changed": False}


def test_a_registry_at_the_baseline_is_refused_then_upgraded_keeping_every_record(
    database_url: str, home: Path, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    engine, records = _filled(database_url, home, tiny_base, lora_dir, lora_dir_2)
    assert all(records.values()), [name for name, rows in records.items() if not rows]

    _to(engine, BASELINE)
    assert "ix_route_examples_route" in _indexes(engine, "route_examples")
    assert _dump(engine, frozenset(LATER_TABLES)) == _at_baseline(records)

    with pytest.raises(SwitchboardError) as refused:
        Registry(database_url, home)
    assert refused.value.code == ErrorCode.SCHEMA
    assert "at schema revision 0001" in refused.value.message
    assert "run `switchboard registry upgrade`" in refused.value.message
    listed = _cli(database_url, home, "registry", "list")  # the CLI refuses in one line
    assert listed.returncode == 1
    assert listed.stderr.strip().count("\n") == 0
    assert "switchboard registry upgrade" in listed.stderr

    upgraded = _cli(database_url, home, "registry", "upgrade", "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout) == {"from": "0001", "to": "0005", "changed": True}
    assert "ix_route_examples_route" not in _indexes(engine, "route_examples")
    assert "ix_adapter_versions_adapter_id" not in _indexes(engine, "adapter_versions")
    assert _dump(engine) == _after_downgrade(records, BASELINE)
    engine.dispose()

    registry = Registry(database_url, home)  # and it serves as before
    assert registry.resolve("legal").ref == "legal:1"
    assert registry.resolve("legal@canary").parent == "legal:1"
    assert registry.manifest("blend:1").components[0].ref == "legal:1"
    assert registry.find("old:1") is None
    assert registry.routes.thresholds("encoder-x") == {"legal": 0.31}
    assert [e.thumbs_up for e in registry.experiments.exposures("legal-ab")] == [(True,)]
    registry.close()


def test_a_registry_from_before_migrations_is_the_baseline(
    database_url: str, home: Path, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    """Tables and no recorded revision: what `create_all` made before migrations existed."""
    engine, records = _filled(database_url, home, tiny_base, lora_dir, lora_dir_2)
    _to(engine, BASELINE)
    with writer(engine).begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))

    with pytest.raises(SwitchboardError, match="from before migrations, this Switchboard needs"):
        Registry(database_url, home)
    assert upgrade(engine) == (BASELINE, head())
    assert _dump(engine) == _after_downgrade(records, BASELINE)
    assert upgrade(engine) == (head(), head())  # nothing left to do
    engine.dispose()


def test_a_database_newer_than_this_switchboard_is_refused(database_url: str, home: Path) -> None:
    Registry(database_url, home).close()
    engine = open_engine(database_url)
    with writer(engine).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(SwitchboardError, match="revision 0099, newer than this Switchboard"):
        Registry(database_url, home)
    with pytest.raises(SwitchboardError, match="upgrade Switchboard"):
        upgrade(engine)
    engine.dispose()


def test_the_models_are_the_schema_the_migrations_make(database_url: str, home: Path) -> None:
    """`registry/schema.py` and the migrations agree: Alembic finds nothing to change."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    Registry(database_url, home).close()
    engine = open_engine(database_url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert differences == []


_OPENER = """
import sys, time
from pathlib import Path
from switchboard_lora.registry import Registry
url, home, go = sys.argv[1:4]
while not Path(go).exists():
    time.sleep(0.005)
Registry(url, Path(home)).close()
"""


def test_processes_opening_a_new_database_at_once_create_it_once(
    database_url: str, home: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, database_url, str(home), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(2)  # every child imported and waiting: then all at the same moment
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    engine = open_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(head(),)]
    engine.dispose()


def test_upgrading_to_one_feedback_per_response_keeps_each_responses_first(
    database_url: str, home: Path, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    """0003: a database from before it may hold repeated feedback (the issue-15 abuse)."""
    from datetime import UTC, datetime

    from alembic import command

    from switchboard_lora.registry.schema import FeedbackRow

    engine, records = _filled(database_url, home, tiny_base, lora_dir, lora_dir_2)
    _to(engine, "0002")
    repeats = [
        {"response_id": "resp-1", "thumbs_up": False, "score": None, "label": f"again {i}",
         "created_at": datetime.now(UTC)}
        for i in range(3)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(FeedbackRow.__table__.insert(), repeats)
        assert conn.scalar(text("SELECT count(*) FROM feedback")) == 4
    with writer(engine).begin() as conn:
        command.upgrade(_config(conn), "head")
    # The first feedback (the original) stays, the repeats are gone.
    assert _dump(engine) == _after_downgrade(records, "0002")
    assert "ix_feedback_response_id" in _indexes(engine, "feedback")
    engine.dispose()
    registry = Registry(database_url, home)
    with pytest.raises(SwitchboardError, match="already has feedback") as repeated:
        registry.experiments.feedback("resp-1", thumbs_up=False)
    assert repeated.value.code == ErrorCode.CONFLICT
    registry.close()
