"""One feedback per response: `feedback.response_id` becomes unique.

A client could post feedback on one response many times and move an experiment's statistics
alone. Where a database already holds repeats, the earliest feedback of each response stays
(the one the client gave first) and the later ones are removed, before the unique index.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    feedback = sa.table("feedback", sa.column("id", sa.Integer), sa.column("response_id"))
    first = sa.select(sa.func.min(feedback.c.id)).group_by(feedback.c.response_id).scalar_subquery()
    op.execute(feedback.delete().where(feedback.c.id.not_in(first)))
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_response_id")
        batch.create_index("ix_feedback_response_id", ["response_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_response_id")
        batch.create_index("ix_feedback_response_id", ["response_id"], unique=False)
