"""The statements that find versions, shared by the adapter store and the experiment store.

Resolving a ref is the registry's hottest path, so its statements (`name:N`, a served name,
`name@alias`, `name`) are built once at import; each picks the version id with a scalar
subquery, then seeks by key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, Select, bindparam, func, select
from sqlalchemy.orm import Session, aliased

from switchboard_lora.registry.db import as_utc
from switchboard_lora.registry.errors import SwitchboardError, not_found
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.refs import PROD_ALIAS, AdapterRef
from switchboard_lora.registry.schema import AdapterRow, AliasRow, ArmRow, ComponentRow, VersionRow

_Parent = aliased(VersionRow)
_ParentAdapter = aliased(AdapterRow)
# The columns every listing reads: version row fields, its adapter's name, its parent's ref.
_INFO_COLUMNS = (
    AdapterRow.name,
    VersionRow.id,
    VersionRow.version,
    VersionRow.method,
    VersionRow.rank,
    VersionRow.base_fingerprint,
    VersionRow.served_name,
    VersionRow.content_digest,
    VersionRow.created_at,
    VersionRow.deleted_at,
    _ParentAdapter.name.label("parent_name"),
    _Parent.version.label("parent_version"),
)


def info_query() -> Any:
    """Versions with what `VersionInfo` needs; callers add their own conditions."""
    return (
        select(*_INFO_COLUMNS)
        .join(AdapterRow, AdapterRow.id == VersionRow.adapter_id)
        .outerjoin(_Parent, _Parent.id == VersionRow.parent_id)
        .outerjoin(_ParentAdapter, _ParentAdapter.id == _Parent.adapter_id)
    )


def _resolve_statements() -> tuple[Any, Any, Any, Any]:
    live = info_query().where(VersionRow.deleted_at.is_(None))
    name: Any = bindparam("name")
    by_version = live.where(AdapterRow.name == name, VersionRow.version == bindparam("version"))
    by_served_name = live.where(VersionRow.served_name == bindparam("served_name"))
    alias_target = (
        select(AliasRow.version_id)
        .join(AdapterRow, AdapterRow.id == AliasRow.adapter_id)
        .where(AdapterRow.name == name, AliasRow.alias == bindparam("alias"))
        .scalar_subquery()
    )
    latest = (
        select(VersionRow.id)
        .join(AdapterRow, AdapterRow.id == VersionRow.adapter_id)
        .where(AdapterRow.name == name, VersionRow.deleted_at.is_(None))
        .order_by(VersionRow.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    by_alias = live.where(VersionRow.id == alias_target)
    by_name = live.where(VersionRow.id == func.coalesce(alias_target, latest))  # prod, else latest
    return by_version, by_served_name, by_alias, by_name


_BY_VERSION, _BY_SERVED_NAME, _BY_ALIAS, _BY_NAME = _resolve_statements()
ALIASES_OF = (
    select(AliasRow.alias)
    .where(AliasRow.version_id == bindparam("version_id"))
    .order_by(AliasRow.alias)
)


def to_info(row: Row[Any], aliases: tuple[str, ...]) -> VersionInfo:
    parent = f"{row.parent_name}:{row.parent_version}" if row.parent_name else None
    return VersionInfo(
        name=row.name,
        version=row.version,
        method=row.method,
        rank=row.rank,
        base_fingerprint=row.base_fingerprint,
        served_name=row.served_name,
        content_digest=row.content_digest,
        created_at=as_utc(row.created_at),
        parent=parent,
        aliases=aliases,
        deleted=row.deleted_at is not None,
    )


def resolve_statement(ref: AdapterRef) -> tuple[Any, dict[str, Any]]:
    """The prebuilt statement for this kind of ref, and its parameters."""
    if ref.digest is not None:
        return _BY_SERVED_NAME, {"served_name": str(ref)}
    if ref.version is not None:
        return _BY_VERSION, {"name": ref.name, "version": ref.version}
    if ref.alias is not None:
        return _BY_ALIAS, {"name": ref.name, "alias": ref.alias}
    return _BY_NAME, {"name": ref.name, "alias": PROD_ALIAS}


def resolve(conn: Any, ref: AdapterRef) -> VersionInfo:
    """The live version a ref names (`name` is its prod alias if set, else the latest), on an
    open connection or session."""
    row = conn.execute(*resolve_statement(ref)).first()
    if row is None:
        raise missing(conn, ref)
    aliases = conn.scalars(ALIASES_OF, {"version_id": row.id}).all()
    return to_info(row, tuple(aliases))


def missing(conn: Any, ref: AdapterRef) -> SwitchboardError:
    """Why `ref` names no live version, as precisely as the database can tell."""
    adapter_id = conn.scalar(select(AdapterRow.id).where(AdapterRow.name == ref.name))
    if adapter_id is None:
        return not_found(f"no adapter named {ref.name!r}")
    if ref.alias is not None:
        return not_found(f"{ref.name} has no alias {ref.alias!r}")
    if ref.version is not None:
        row = conn.execute(
            select(VersionRow.deleted_at, VersionRow.served_name).where(
                VersionRow.adapter_id == adapter_id, VersionRow.version == ref.version
            )
        ).first()
        if row is None:
            return not_found(f"{ref} does not exist")
        if ref.digest is not None and row.served_name != str(ref):
            return not_found(f"{ref} is not {ref.name}:{ref.version}'s content")
        return not_found(f"{ref} was deleted")
    return not_found(f"{ref.name} has no live version")


def version_row(session: Session, ref: AdapterRef) -> VersionRow:
    """The row of the live version `ref` names, inside the caller's transaction."""
    found = session.execute(*resolve_statement(ref)).first()
    row = session.get(VersionRow, found.id) if found is not None else None
    if row is None:
        raise missing(session, ref)
    return row


def ref_of(session: Session, row: VersionRow) -> str:
    name = session.scalar(select(AdapterRow.name).where(AdapterRow.id == row.adapter_id))
    return f"{name}:{row.version}"


def exists(session: Session, query: Select[Any]) -> bool:
    return session.scalar(query.limit(1)) is not None


def is_derived(session: Session, version_id: int) -> bool:
    """Whether a version lists components (a mix)."""
    return exists(
        session, select(ComponentRow.version_id).where(ComponentRow.version_id == version_id)
    )


def referrers(session: Session, version_id: int) -> list[str]:
    """What names a version, beyond its own adapter: aliases, experiments, lineage, mixes."""
    named_by = {
        "an alias": select(AliasRow.alias).where(AliasRow.version_id == version_id),
        "an experiment": select(ArmRow.position).where(ArmRow.version_id == version_id),
        "a child version": select(VersionRow.id).where(VersionRow.parent_id == version_id),
        "a mix": select(ComponentRow.version_id).where(ComponentRow.component_id == version_id),
    }
    return [what for what, query in named_by.items() if exists(session, query)]
