"""Router v2: the review loop's log of routing decisions (and the labels given to them), and
route descriptions an operator sets.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("in_domain", sa.Float(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("scores", sa.Text(), nullable=False),
        sa.Column("label", sa.String(length=63), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_route_decisions_created_at"), "route_decisions", ["created_at"], unique=False
    )
    op.create_index(op.f("ix_route_decisions_margin"), "route_decisions", ["margin"], unique=False)
    op.create_table(
        "route_descriptions",
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route"),
    )


def downgrade() -> None:
    op.drop_table("route_descriptions")
    op.drop_index(op.f("ix_route_decisions_margin"), table_name="route_decisions")
    op.drop_index(op.f("ix_route_decisions_created_at"), table_name="route_decisions")
    op.drop_table("route_decisions")
