"""Alembic's entry point for the registry's migrations. Switchboard always hands it an open
connection inside a transaction (`switchboard_lora.registry.db`), never a URL from a config file."""

from __future__ import annotations

from alembic import context

from switchboard_lora.registry.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them: batch mode does that
)
with context.begin_transaction():
    context.run_migrations()
