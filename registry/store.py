"""The adapter registry: immutable versions, aliases, lineage, integrity, served names.

Metadata lives in SQL (SQLAlchemy; SQLite or PostgreSQL), files in a content-addressed blob
store. A publish writes the blobs first (atomic renames, idempotent) and then the rows in one
transaction, so a publish killed at any point leaves no visible version.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, and_, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from registry.adapter_dir import inspect_adapter
from registry.aliases import point_alias
from registry.bases import BaseModelInfo
from registry.blobs import BlobStore
from registry.db import as_utc, open_engine, writer
from registry.errors import ErrorCode, SwitchboardError, not_found
from registry.experiments import ExperimentStore
from registry.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Component,
    FileEntry,
    Manifest,
    ManifestDraft,
    parse_manifest,
    read_draft,
)
from registry.refs import PROD_ALIAS, AdapterRef, served_name, validate_name
from registry.routing import RouteStore
from registry.schema import AdapterRow, AliasRow, ComponentRow, FileRow, VersionRow
from registry.tensors import sha256_file

log = logging.getLogger(__name__)

_PUBLISH_ATTEMPTS = 30
_CHECKOUT_ATTEMPTS = 5
_SQLITE_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
_TOOLS = ("switchboard", "peft", "transformers", "torch")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version as listings show it (the manifest holds the rest)."""

    name: str
    version: int
    method: str
    rank: int | None
    base_fingerprint: str
    served_name: str
    content_digest: str
    created_at: datetime
    parent: str | None
    aliases: tuple[str, ...] = ()
    deleted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "method": self.method,
            "rank": self.rank,
            "base_fingerprint": self.base_fingerprint,
            "served_name": self.served_name,
            "content_digest": self.content_digest,
            "created_at": self.created_at.isoformat(),
            "parent": self.parent,
            "aliases": list(self.aliases),
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class AdapterSummary:
    name: str
    versions: int
    latest: int | None
    aliases: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "latest": self.latest,
            "aliases": self.aliases,
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ref: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _verified(directory: Path, files: dict[str, FileEntry]) -> bool:
    try:
        return all(sha256_file(directory / p) == e.sha256 for p, e in files.items())
    except OSError:  # missing, or being replaced right now
        return False


def content_digest(files: dict[str, FileEntry]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path].sha256}\n".encode())
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    found = {}
    for dist in _TOOLS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


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


def _info_query() -> Any:
    return (
        select(*_INFO_COLUMNS)
        .join(AdapterRow, AdapterRow.id == VersionRow.adapter_id)
        .outerjoin(_Parent, _Parent.id == VersionRow.parent_id)
        .outerjoin(_ParentAdapter, _ParentAdapter.id == _Parent.adapter_id)
    )


def _resolve_statements() -> tuple[Any, Any, Any]:
    """Statements for `name:N`, `name@alias` and `name`, built once (building costs more than
    running them). Each picks the version id with a scalar subquery, then seeks by key."""
    live = _info_query().where(VersionRow.deleted_at.is_(None))
    name: Any = bindparam("name")
    by_version = live.where(AdapterRow.name == name, VersionRow.version == bindparam("version"))
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
    return by_version, by_alias, by_name


_BY_VERSION, _BY_ALIAS, _BY_NAME = _resolve_statements()
_ALIASES_OF = (
    select(AliasRow.alias)
    .where(AliasRow.version_id == bindparam("version_id"))
    .order_by(AliasRow.alias)
)


def _to_info(row: Row[Any], aliases: tuple[str, ...]) -> VersionInfo:
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


class Registry:
    """Python API of the registry; the CLI and the HTTP API call this."""

    def __init__(self, database_url: str, home: Path) -> None:
        self.home = home
        self.blobs = BlobStore(home / "blobs")
        self._engine: Engine = open_engine(database_url)
        self._writer: Engine = writer(self._engine)
        self.routes = RouteStore(self._engine, self._writer)
        self.experiments = ExperimentStore(self._engine, self._writer, self)

    def close(self) -> None:
        self._engine.dispose()

    # ---- publishing ---------------------------------------------------------------------

    def publish(
        self,
        source: Path,
        name: str,
        base: BaseModelInfo,
        *,
        parent: str | None = None,
        draft: ManifestDraft | None = None,
    ) -> Manifest:
        """Store the PEFT adapter directory `source` as the next version of `name`."""
        validate_name(name)
        shape = inspect_adapter(source, base)
        draft = draft or read_draft(source) or ManifestDraft()
        if draft.base is not None and draft.base.fingerprint != base.fingerprint:
            raise SwitchboardError(
                ErrorCode.INCOMPATIBLE_BASE,
                f"{source} was made for base {draft.base.id} ({draft.base.fingerprint[:19]}…), "
                f"not {base.id} ({base.fingerprint[:19]}…)",
            )
        hashes = {rel: sha256_file(source / rel) for rel in shape.files}
        if draft.files is not None:
            for rel, entry in sorted(draft.files.items()):
                if rel not in hashes:
                    raise SwitchboardError(
                        ErrorCode.INTEGRITY, f"{source}: {rel} is in the manifest but missing"
                    )
                if hashes[rel] != entry.sha256:
                    raise SwitchboardError(
                        ErrorCode.INTEGRITY,
                        f"{source}: checksum of {rel} does not match its manifest "
                        f"({hashes[rel][:12]}… != {entry.sha256[:12]}…)",
                    )
        files = {}
        for rel in shape.files:
            sha, size = self.blobs.put(source / rel)
            if sha != hashes[rel]:
                raise SwitchboardError(ErrorCode.INTEGRITY, f"{source}: {rel} changed while read")
            files[rel] = FileEntry(sha256=sha, size=size)
        digest = content_digest(files)
        manifest_fields = dict(
            schema_version=SCHEMA_VERSION,
            name=name,
            method=shape.method,
            base={"id": base.id, "fingerprint": base.fingerprint},
            files=files,
            data=draft.data,
            tools=tool_versions(),
            content_digest=digest,
            rank=shape.rank,
            alpha=shape.alpha,
            target_modules=list(shape.target_modules),
            num_virtual_tokens=shape.num_virtual_tokens,
            description=draft.description,
            metrics=draft.metrics,
            hyperparameters=draft.hyperparameters,
            routing_examples=draft.routing_examples,
        )
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                return self._insert_version(manifest_fields, parent, draft.components)
            except (IntegrityError, OperationalError) as exc:
                # A concurrent publish took this version number or created the adapter
                # (unique key), or held SQLite's lock past the busy timeout: try again.
                code = getattr(exc.orig, "sqlite_errorcode", None)  # may be an extended code
                busy = code is not None and code & 0xFF in _SQLITE_BUSY
                if (
                    not (isinstance(exc, IntegrityError) or busy)
                    or attempt == _PUBLISH_ATTEMPTS - 1
                ):
                    raise
                log.debug("publish of %s retried: %s", name, exc.__class__.__name__)
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _insert_version(
        self, fields: dict[str, Any], parent: str | None, components: list[Component]
    ) -> Manifest:
        now = datetime.now(UTC)
        with Session(self._writer) as session, session.begin():
            parent_row = self._row(session, AdapterRef.parse(parent)) if parent else None
            component_rows = [
                (self._row(session, AdapterRef.parse(c.ref)), c.weight) for c in components
            ]
            adapter = session.scalar(select(AdapterRow).where(AdapterRow.name == fields["name"]))
            if adapter is None:
                adapter = AdapterRow(name=fields["name"], created_at=now)
                session.add(adapter)
                session.flush()
            latest = session.scalar(
                select(func.max(VersionRow.version)).where(VersionRow.adapter_id == adapter.id)
            )
            version = (latest or 0) + 1
            manifest = Manifest(
                **fields,
                version=version,
                created_at=now.isoformat(),
                served_name=served_name(fields["name"], version, fields["content_digest"]),
                parent=self._ref_of(session, parent_row) if parent_row else None,
                components=[
                    Component(ref=self._ref_of(session, row), weight=w) for row, w in component_rows
                ],
            )
            row = VersionRow(
                adapter_id=adapter.id,
                version=version,
                method=manifest.method,
                rank=manifest.rank,
                base_fingerprint=manifest.base.fingerprint,
                content_digest=manifest.content_digest,
                served_name=manifest.served_name,
                parent_id=parent_row.id if parent_row else None,
                manifest=manifest.to_json(),
                created_at=now,
            )
            session.add(row)
            session.flush()
            session.add_all(
                FileRow(version_id=row.id, path=p, sha256=e.sha256, size=e.size)
                for p, e in manifest.files.items()
            )
            session.add_all(
                ComponentRow(version_id=row.id, position=i, component_id=c.id, weight=w)
                for i, (c, w) in enumerate(component_rows)
            )
        log.info("published %s (%s)", manifest.ref, manifest.served_name)
        return manifest

    # ---- reading ------------------------------------------------------------------------

    def resolve(self, ref: str | AdapterRef) -> VersionInfo:
        """The live version a ref names: `name` is its prod alias if set, else the latest."""
        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        with self._engine.connect() as conn:
            row = conn.execute(*self._resolve_query(parsed)).first()
            if row is None:
                raise self._missing(conn, parsed)
            aliases = conn.scalars(_ALIASES_OF, {"version_id": row.id}).all()
        return _to_info(row, tuple(aliases))

    def find(self, ref: str | AdapterRef) -> VersionInfo | None:
        """`resolve`, or None where the ref names no live version."""
        try:
            return self.resolve(ref)
        except SwitchboardError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise

    def manifest(self, ref: str | AdapterRef) -> Manifest:
        info = self.resolve(ref)
        with self._engine.connect() as conn:
            text = conn.scalar(
                select(VersionRow.manifest).where(VersionRow.served_name == info.served_name)
            )
        manifest: Manifest = parse_manifest(text or "", Manifest, info.ref)
        return manifest

    def list_adapters(self) -> list[AdapterSummary]:
        with self._engine.connect() as conn:
            counts = conn.execute(
                select(AdapterRow.name, func.count(VersionRow.id), func.max(VersionRow.version))
                .join(VersionRow, VersionRow.adapter_id == AdapterRow.id)
                .where(VersionRow.deleted_at.is_(None))
                .group_by(AdapterRow.name)
                .order_by(AdapterRow.name)
            ).all()
            alias_rows = conn.execute(
                select(AdapterRow.name, AliasRow.alias, VersionRow.version)
                .join(AliasRow, AliasRow.adapter_id == AdapterRow.id)
                .join(VersionRow, VersionRow.id == AliasRow.version_id)
            ).all()
        aliases: dict[str, dict[str, int]] = {}
        for name, alias, version in alias_rows:
            aliases.setdefault(name, {})[alias] = version
        return [AdapterSummary(n, c, m, aliases.get(n, {})) for n, c, m in counts]

    def list_versions(self, name: str, *, include_deleted: bool = False) -> list[VersionInfo]:
        validate_name(name)
        query = _info_query().where(AdapterRow.name == name).order_by(VersionRow.version)
        if not include_deleted:
            query = query.where(VersionRow.deleted_at.is_(None))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            if (
                not rows
                and conn.scalar(select(AdapterRow.id).where(AdapterRow.name == name)) is None
            ):
                raise not_found(f"no adapter named {name!r}")
            alias_rows = conn.execute(
                select(AliasRow.version_id, AliasRow.alias)
                .join(AdapterRow, AdapterRow.id == AliasRow.adapter_id)
                .where(AdapterRow.name == name)
                .order_by(AliasRow.alias)
            ).all()
        by_version: dict[int, list[str]] = {}
        for version_id, alias in alias_rows:
            by_version.setdefault(version_id, []).append(alias)
        return [_to_info(r, tuple(by_version.get(r.id, ()))) for r in rows]

    # ---- aliases and deletion -------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> VersionInfo:
        """Point `name@alias` at `version` (one row updated: readers see old or new)."""
        validate_name(alias, "alias")
        target = AdapterRef(validate_name(name), version=version)
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                with Session(self._writer) as session, session.begin():
                    row = self._row(session, target)
                    point_alias(session, row.adapter_id, alias, row.id)
                break
            except IntegrityError:  # the same alias created concurrently: update it instead
                if attempt == _PUBLISH_ATTEMPTS - 1:
                    raise
        log.info("alias %s@%s -> %s", name, alias, version)
        return self.resolve(AdapterRef(name, alias=alias))

    def remove_alias(self, name: str, alias: str) -> None:
        validate_name(alias, "alias")
        with Session(self._writer) as session, session.begin():
            adapter_id = session.scalar(
                select(AdapterRow.id).where(AdapterRow.name == validate_name(name))
            )
            result = session.execute(
                delete(AliasRow).where(
                    and_(AliasRow.adapter_id == adapter_id, AliasRow.alias == alias)
                )
            )
            if getattr(result, "rowcount", 0) == 0:
                raise not_found(f"{name} has no alias {alias!r}")

    def delete(self, ref: str | AdapterRef) -> VersionInfo:
        """Soft-delete a version: it stays in the history, is never resolved again."""
        parsed = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        with Session(self._writer) as session, session.begin():
            row = self._row(session, parsed)
            pointing = session.scalars(
                select(AliasRow.alias).where(AliasRow.version_id == row.id)
            ).all()
            name = self._ref_of(session, row)
            if pointing:
                raise SwitchboardError(
                    ErrorCode.CONFLICT,
                    f"cannot delete {name}: alias(es) {', '.join(sorted(pointing))} point to it; "
                    "move or remove them first",
                )
            session.execute(
                update(VersionRow)
                .where(VersionRow.id == row.id)
                .values(deleted_at=datetime.now(UTC))
            )
            deleted = session.execute(_info_query().where(VersionRow.id == row.id)).one()
        log.info("deleted %s", name)
        return _to_info(deleted, ())

    # ---- files: integrity, checkout, export ----------------------------------------------

    def verify(self, ref: str | None = None) -> list[VerifyResult]:
        """Re-hash every stored file of one version, or of every live version."""
        if ref is not None:
            targets = [self.resolve(ref)]
        else:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    _info_query()
                    .where(VersionRow.deleted_at.is_(None))
                    .order_by(AdapterRow.name, VersionRow.version)
                ).all()
            targets = [_to_info(r, ()) for r in rows]
        checked: dict[tuple[str, int], str | None] = {}  # a blob shared by versions: hash once
        results = []
        for info in targets:
            problems = []
            for path, entry in self._files(info).items():
                key = (entry.sha256, entry.size)
                if key not in checked:
                    checked[key] = self.blobs.check(entry.sha256, entry.size)
                if checked[key] is not None:
                    problems.append(f"{path}: {checked[key]}")
            results.append(VerifyResult(info.ref, tuple(problems)))
        return results

    def gc(self, min_age_seconds: float = 3600.0, *, dry_run: bool = False) -> list[Path]:
        """Remove blobs no version references (left by publishes killed before their commit).

        Only files older than `min_age_seconds` go: a publish in flight writes its blobs
        before its rows, and must not lose them. Deleted versions keep their files.
        """
        with self._engine.connect() as conn:
            referenced = set(conn.scalars(select(FileRow.sha256).distinct()))
        cutoff = time.time() - min_age_seconds
        doomed = [
            path
            for name, path in self.blobs.stored()
            if name not in referenced and path.stat().st_mtime < cutoff
        ]
        if not dry_run:
            for path in doomed:
                path.unlink(missing_ok=True)
            log.info("gc removed %d unreferenced files", len(doomed))
        return doomed

    def checkout(self, ref: str | AdapterRef) -> tuple[VersionInfo, Path]:
        """A verified local directory of a version's files, for an engine to load.

        Every file is re-hashed on each call: a corrupted or missing file raises an
        integrity error instead of reaching an engine.
        """
        info = self.resolve(ref)
        target = self.home / "checkouts" / info.served_name
        files = self._files(info)
        # Concurrent checkouts (threads of a server, other processes) must never remove a good
        # directory under a reader: a directory is replaced only when it fails verification,
        # and then by renames, so a reader sees the old files, the new ones, or none (retry).
        for _ in range(_CHECKOUT_ATTEMPTS):
            if _verified(target, files):
                return info, target
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            try:
                self._materialise(info, files, staging)
                try:
                    staging.rename(target)
                    return info, target
                except OSError:  # a directory is there: someone else's, or a damaged one
                    if _verified(target, files):
                        return info, target
                    damaged = Path(f"{staging}.damaged")
                    with contextlib.suppress(OSError):
                        target.rename(damaged)
                    shutil.rmtree(damaged, ignore_errors=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        raise SwitchboardError(
            ErrorCode.CONFLICT, f"could not check out {info.ref}: its directory kept changing"
        )

    def export(self, ref: str | AdapterRef, dest: Path) -> Manifest:
        """Write a version's PEFT files and its manifest to `dest` (new or empty)."""
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise SwitchboardError(ErrorCode.ALREADY_EXISTS, f"{dest} exists and is not empty")
        info = self.resolve(ref)
        self._materialise(info, self._files(info), dest)
        return self.manifest(info.ref)

    def _materialise(self, info: VersionInfo, files: dict[str, FileEntry], dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for path, entry in files.items():
            try:
                self.blobs.copy_out(entry.sha256, entry.size, dest / path)
            except SwitchboardError as exc:
                raise SwitchboardError(
                    ErrorCode.INTEGRITY,
                    f"{info.ref} cannot be used: {path}: {exc.message}; "
                    "run `switchboard registry verify`",
                ) from exc
        (dest / MANIFEST_FILE).write_text(self.manifest(info.ref).to_json())

    def _files(self, info: VersionInfo) -> dict[str, FileEntry]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(FileRow.path, FileRow.sha256, FileRow.size)
                .join(VersionRow, VersionRow.id == FileRow.version_id)
                .where(VersionRow.served_name == info.served_name)
            ).all()
        return {p: FileEntry(sha256=s, size=n) for p, s, n in rows}

    # ---- helpers --------------------------------------------------------------------------

    @staticmethod
    def _resolve_query(ref: AdapterRef) -> tuple[Any, dict[str, Any]]:
        """The prebuilt statement for this kind of ref, and its parameters."""
        if ref.version is not None:
            return _BY_VERSION, {"name": ref.name, "version": ref.version}
        if ref.alias is not None:
            return _BY_ALIAS, {"name": ref.name, "alias": ref.alias}
        return _BY_NAME, {"name": ref.name, "alias": PROD_ALIAS}

    def _missing(self, conn: Any, ref: AdapterRef) -> SwitchboardError:
        adapter_id = conn.scalar(select(AdapterRow.id).where(AdapterRow.name == ref.name))
        if adapter_id is None:
            return not_found(f"no adapter named {ref.name!r}")
        if ref.alias is not None:
            return not_found(f"{ref.name} has no alias {ref.alias!r}")
        if ref.version is not None:
            deleted = conn.scalar(
                select(VersionRow.deleted_at).where(
                    VersionRow.adapter_id == adapter_id, VersionRow.version == ref.version
                )
            )
            state = "was deleted" if deleted is not None else "does not exist"
            return not_found(f"{ref} {state}")
        return not_found(f"{ref.name} has no live version")

    def _row(self, session: Session, ref: AdapterRef) -> VersionRow:
        version_id = session.execute(*self._resolve_query(ref)).first()
        if version_id is None:
            raise self._missing(session, ref)
        row = session.get(VersionRow, version_id.id)
        if row is None:  # deleted between the two statements: cannot happen in one transaction
            raise self._missing(session, ref)
        return row

    @staticmethod
    def _ref_of(session: Session, row: VersionRow) -> str:
        name = session.scalar(select(AdapterRow.name).where(AdapterRow.id == row.adapter_id))
        return f"{name}:{row.version}"
