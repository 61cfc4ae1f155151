"""SQL tables of the registry (SQLAlchemy; the same schema on SQLite and PostgreSQL).

These models describe the schema at the newest migration (`registry/migrations/versions`):
a change here is a new migration there, and a test checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class AdapterRow(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VersionRow(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))  # led by the unique key
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int | None] = mapped_column(Integer)
    base_fingerprint: Mapped[str] = mapped_column(String(80), index=True)
    content_digest: Mapped[str] = mapped_column(String(64))
    served_name: Mapped[str] = mapped_column(String(100), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    manifest: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FileRow(Base):
    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(255), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class AliasRow(Base):
    """A pointer `(adapter, alias) -> version`, moved by updating one row."""

    __tablename__ = "aliases"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ComponentRow(Base):
    """One part of a mixture version: which version, with what weight."""

    __tablename__ = "mixture_components"

    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    component_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    weight: Mapped[float] = mapped_column(Float)


class RouteExampleRow(Base):
    """A request an operator says must go to a route (an adapter name, or `base`: no adapter).

    Kept apart from the immutable versions: examples are added and removed at any time,
    and apply to whichever version the route's name resolves to.
    """

    __tablename__ = "route_examples"
    __table_args__ = (UniqueConstraint("route", "text_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route: Mapped[str] = mapped_column(String(63))  # led by the unique key
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RouteDescriptionRow(Base):
    """What a route is for, in a sentence: evidence beside its examples. Set by an operator;
    it overrides the description in the route's version manifest."""

    __tablename__ = "route_descriptions"

    route: Mapped[str] = mapped_column(String(63), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RouteDecisionRow(Base):
    """A routing decision the server logged (`SWITCHBOARD_ROUTE_LOG`), with the request's text,
    how sure the router was, and the route an operator labelled it with, once reviewed."""

    __tablename__ = "route_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    text: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    route: Mapped[str] = mapped_column(String(63))
    in_domain: Mapped[float | None] = mapped_column(Float, nullable=True)
    margin: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    scores: Mapped[str] = mapped_column(Text)  # JSON {route: score}, best first
    label: Mapped[str | None] = mapped_column(String(63), nullable=True)
    labelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RouteThresholdRow(Base):
    """A calibrated threshold for one route, valid for the scores it was fitted on: `encoder`
    is a key naming an encoder and how its scores were made (the router's `scores_key`)."""

    __tablename__ = "route_thresholds"

    route: Mapped[str] = mapped_column(String(63), primary_key=True)
    encoder: Mapped[str] = mapped_column(String(64), primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    examples: Mapped[int] = mapped_column(Integer)
    calibrated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExperimentRow(Base):
    """An A/B test of an adapter's versions: while `stopped_at` is null, requests that
    resolve to `adapter` are split between its arms."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    adapter: Mapped[str] = mapped_column(String(63), index=True)
    key_header: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(255))  # "stopped", "promoted legal:4"


class ArmRow(Base):
    __tablename__ = "experiment_arms"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(100))  # "legal:3", or "base"
    version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    share: Mapped[float] = mapped_column(Float)


class ExposureRow(Base):
    """One response served by an experiment's arm: what feedback is tied to."""

    __tablename__ = "experiment_exposures"

    response_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client: Mapped[str | None] = mapped_column(String(64))  # the key's fingerprint; None: open


class FeedbackRow(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_id: Mapped[str] = mapped_column(  # one feedback per response
        ForeignKey("experiment_exposures.response_id"), index=True, unique=True
    )
    thumbs_up: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
