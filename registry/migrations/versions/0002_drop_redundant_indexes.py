"""Drop two indexes that repeat the leading column of a unique constraint.

`route_examples.route` is served by the unique index on (route, text_sha256), and
`adapter_versions.adapter_id` by the one on (adapter_id, version), on SQLite and PostgreSQL
alike: the separate indexes only cost every insert a second index write.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("route_examples") as batch:
        batch.drop_index("ix_route_examples_route")
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_index("ix_adapter_versions_adapter_id")


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.create_index("ix_adapter_versions_adapter_id", ["adapter_id"], unique=False)
    with op.batch_alter_table("route_examples") as batch:
        batch.create_index("ix_route_examples_route", ["route"], unique=False)
