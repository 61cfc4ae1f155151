"""Feedback only from whoever received the response: an exposure records which API key
(its fingerprint, never the key) the response went to. Exposures from before know none and
stay open to any key, as they were.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiment_exposures", sa.Column("client", sa.String(length=64)))


def downgrade() -> None:
    # In place, never by copying the table: feedback rows reference it, and SQLite refuses
    # to drop a referenced table (SQLite 3.35+ drops a plain column itself).
    with op.batch_alter_table("experiment_exposures", recreate="never") as batch:
        batch.drop_column("client")
