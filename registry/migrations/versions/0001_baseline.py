"""Baseline: the schema as the first releases created it (with `create_all`).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("adapter", sa.String(length=63), nullable=False),
        sa.Column("key_header", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_experiments_adapter"), "experiments", ["adapter"], unique=False)
    op.create_table(
        "route_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("route", "text_sha256"),
    )
    op.create_index(op.f("ix_route_examples_route"), "route_examples", ["route"], unique=False)
    op.create_table(
        "route_thresholds",
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("encoder", sa.String(length=64), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("calibrated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", "encoder"),
    )
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("base_fingerprint", sa.String(length=80), nullable=False),
        sa.Column("content_digest", sa.String(length=64), nullable=False),
        sa.Column("served_name", sa.String(length=100), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["adapter_versions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_id", "version"),
        sa.UniqueConstraint("served_name"),
    )
    op.create_index(
        op.f("ix_adapter_versions_adapter_id"), "adapter_versions", ["adapter_id"], unique=False
    )
    op.create_index(
        op.f("ix_adapter_versions_base_fingerprint"),
        "adapter_versions",
        ["base_fingerprint"],
        unique=False,
    )
    op.create_table(
        "experiment_exposures",
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
        ),
        sa.PrimaryKeyConstraint("response_id"),
    )
    op.create_index(
        op.f("ix_experiment_exposures_experiment_id"),
        "experiment_exposures",
        ["experiment_id"],
        unique=False,
    )
    op.create_table(
        "aliases",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"],
            ["adapters.id"],
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
        ),
        sa.PrimaryKeyConstraint("adapter_id", "alias"),
    )
    op.create_index(op.f("ix_aliases_version_id"), "aliases", ["version_id"], unique=False)
    op.create_table(
        "experiment_arms",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("share", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
        ),
        sa.PrimaryKeyConstraint("experiment_id", "position"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("thumbs_up", sa.Boolean(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["response_id"],
            ["experiment_exposures.response_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_feedback_response_id"), "feedback", ["response_id"], unique=False)
    op.create_table(
        "mixture_components",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("component_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["component_id"],
            ["adapter_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
        ),
        sa.PrimaryKeyConstraint("version_id", "position"),
    )
    op.create_table(
        "version_files",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
        ),
        sa.PrimaryKeyConstraint("version_id", "path"),
    )
    op.create_index(op.f("ix_version_files_sha256"), "version_files", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_version_files_sha256"), table_name="version_files")
    op.drop_table("version_files")
    op.drop_table("mixture_components")
    op.drop_index(op.f("ix_feedback_response_id"), table_name="feedback")
    op.drop_table("feedback")
    op.drop_table("experiment_arms")
    op.drop_index(op.f("ix_aliases_version_id"), table_name="aliases")
    op.drop_table("aliases")
    op.drop_index(op.f("ix_experiment_exposures_experiment_id"), table_name="experiment_exposures")
    op.drop_table("experiment_exposures")
    op.drop_index(op.f("ix_adapter_versions_base_fingerprint"), table_name="adapter_versions")
    op.drop_index(op.f("ix_adapter_versions_adapter_id"), table_name="adapter_versions")
    op.drop_table("adapter_versions")
    op.drop_table("route_thresholds")
    op.drop_index(op.f("ix_route_examples_route"), table_name="route_examples")
    op.drop_table("route_examples")
    op.drop_index(op.f("ix_experiments_adapter"), table_name="experiments")
    op.drop_table("experiments")
    op.drop_table("adapters")
