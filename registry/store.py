"""The adapter registry: immutable versions, aliases, lineage, integrity, served names.

Metadata lives in SQL (SQLAlchemy; SQLite or PostgreSQL), files in a content-addressed blob
store. A publish writes the blobs first (atomic renames, idempotent) and then the rows in one
transaction, so a publish killed at any point leaves no visible version.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, func, select, update
from sqlalchemy.orm import Session

from switchboard_lora.registry import queries
from switchboard_lora.registry.adapter_dir import (
    ADAPTER_FILES,
    adapter_problems,
    inspect_adapter,
)
from switchboard_lora.registry.aliases import point_alias
from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.blobs import BlobStore, StoredBlob, open_blob_store
from switchboard_lora.registry.db import open_engine, retry_conflicts, writer
from switchboard_lora.registry.decision_log import DecisionLog
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError, not_found
from switchboard_lora.registry.experiments.store import ExperimentStore
from switchboard_lora.registry.files import VersionFiles, content_digest, store_files
from switchboard_lora.registry.manifest import (
    SCHEMA_VERSION,
    Component,
    FileEntry,
    Manifest,
    ManifestDraft,
    parse_manifest,
    read_draft,
    tool_versions,
)
from switchboard_lora.registry.migrate import ensure_schema
from switchboard_lora.registry.records import (
    AdapterSummary,
    VerifyResult,
    VersionDetail,
    VersionInfo,
)
from switchboard_lora.registry.refs import MIX_PREFIX, AdapterRef, served_name, validate_name
from switchboard_lora.registry.route_store import RouteStore
from switchboard_lora.registry.schema import AdapterRow, AliasRow, ComponentRow, FileRow, VersionRow
from switchboard_lora.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


def _parse(ref: str | AdapterRef) -> AdapterRef:
    return ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)


class Registry:
    """Python API of the registry; the CLI and the HTTP API call this."""

    def __init__(
        self,
        database_url: str,
        home: Path,
        blobs: BlobStore | None = None,
        *,
        cache_max_bytes: int | None = None,
    ) -> None:
        self.home = home
        self.database_url = database_url
        self.blobs = blobs if blobs is not None else open_blob_store(None, home)
        self._copies = VersionFiles(self.blobs, home / "checkouts", cache_max_bytes)
        self._engine: Engine = open_engine(database_url)
        ensure_schema(self._engine)  # created at the newest revision, or refused if behind
        self._writer: Engine = writer(self._engine)
        self.routes = RouteStore(self._engine, self._writer)
        self.decisions = DecisionLog(self._engine, self._writer, self.routes)
        self.experiments = ExperimentStore(self._engine, self._writer)
        self._servable: set[tuple[str, str | None]] = set()  # (served name, base) checked

    def close(self) -> None:
        self._copies.release()  # its checkouts may be evicted by others now
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
        if shape.left_out:
            log.warning(
                "%s: left out %s (not part of a PEFT adapter; only %s are stored)",
                source, ", ".join(shape.left_out), " and ".join(ADAPTER_FILES),
            )  # fmt: skip
        draft = draft or read_draft(source) or ManifestDraft()
        if name.startswith(MIX_PREFIX) and not draft.components:
            raise SwitchboardError(
                ErrorCode.INVALID_NAME,
                f"names starting with {MIX_PREFIX!r} are reserved for the mixes Switchboard "
                "builds (a version listing its components)",
            )
        if draft.base is not None and draft.base.fingerprint != base.fingerprint:
            raise SwitchboardError(
                ErrorCode.INCOMPATIBLE_BASE,
                f"{source} was made for base {draft.base.id} ({draft.base.fingerprint[:19]}…), "
                f"not {base.id} ({base.fingerprint[:19]}…)",
            )
        files = store_files(self.blobs, source, shape.files, draft)
        fields = dict(
            schema_version=SCHEMA_VERSION,
            name=name,
            method=shape.method,
            base={"id": base.id, "fingerprint": base.fingerprint},
            files=files,
            data=draft.data,
            tools=tool_versions(),
            content_digest=content_digest(files),
            rank=shape.rank,
            alpha=shape.alpha,
            target_modules=list(shape.target_modules),
            num_virtual_tokens=shape.num_virtual_tokens,
            description=draft.description,
            metrics=draft.metrics,
            hyperparameters=draft.hyperparameters,
            routing_examples=draft.routing_examples,
        )
        manifest = retry_conflicts(
            lambda: self._insert_version(fields, parent, draft.components), f"publish of {name}"
        )
        log.info("published %s (%s)", manifest.ref, manifest.served_name)
        return manifest

    def _insert_version(
        self, fields: dict[str, Any], parent: str | None, components: list[Component]
    ) -> Manifest:
        """One transaction: the version number is max + 1 (a clash with a concurrent publish
        raises IntegrityError, and the caller tries again)."""
        now = datetime.now(UTC)
        with Session(self._writer) as session, session.begin():
            parent_row = queries.version_row(session, AdapterRef.parse(parent)) if parent else None
            component_rows = [
                (queries.version_row(session, AdapterRef.parse(c.ref)), c.weight)
                for c in components
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
                parent=queries.ref_of(session, parent_row) if parent_row else None,
                components=[
                    Component(ref=queries.ref_of(session, row), weight=w)
                    for row, w in component_rows
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
        return manifest

    # ---- reading ------------------------------------------------------------------------

    def resolve(self, ref: str | AdapterRef) -> VersionInfo:
        """The live version a ref names: `name` is its prod alias if set, else the latest."""
        with self._engine.connect() as conn:
            return queries.resolve(conn, _parse(ref))

    def find(self, ref: str | AdapterRef) -> VersionInfo | None:
        """`resolve`, or None where the ref names no live version."""
        try:
            return self.resolve(ref)
        except SwitchboardError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise

    def manifest(self, ref: str | AdapterRef) -> Manifest:
        return self._manifest(self.resolve(ref))

    def _manifest(self, info: VersionInfo) -> Manifest:
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
        query = queries.info_query().where(AdapterRow.name == name).order_by(VersionRow.version)
        if not include_deleted:
            query = query.where(VersionRow.deleted_at.is_(None))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            if (
                not rows
                and conn.scalar(select(AdapterRow.id).where(AdapterRow.name == name)) is None
            ):
                raise not_found(f"no adapter named {name!r}")
            aliases = _aliases_by_version(conn, name)
        return [queries.to_info(r, aliases.get(r.id, ())) for r in rows]

    def catalogue(self) -> list[VersionDetail]:
        """Every live version, by adapter and version, with its stored size, base and training
        metrics: three statements, whatever the number of versions (the console's overview)."""
        sizes = (
            select(FileRow.version_id, func.sum(FileRow.size).label("size"))
            .group_by(FileRow.version_id)
            .subquery()
        )
        query = (
            queries.info_query()
            .add_columns(VersionRow.manifest, func.coalesce(sizes.c.size, 0).label("size"))
            .outerjoin(sizes, sizes.c.version_id == VersionRow.id)
            .where(VersionRow.deleted_at.is_(None))
            .order_by(AdapterRow.name, VersionRow.version)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
            aliases = _aliases_by_version(conn)
        details = []
        for row in rows:
            manifest = json.loads(row.manifest)  # a stored manifest was validated at publish
            details.append(
                VersionDetail(
                    queries.to_info(row, aliases.get(row.id, ())),
                    int(row.size),
                    str(manifest.get("base", {}).get("id", "")),
                    dict(manifest.get("metrics", {})),
                    str(manifest.get("description", "")),
                )
            )
        return details

    # ---- aliases and deletion -------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> VersionInfo:
        """Point `name@alias` at `version` (one row updated: readers see old or new)."""
        validate_name(alias, "alias")
        target = AdapterRef(validate_name(name), version=version)

        def write() -> None:
            with Session(self._writer) as session, session.begin():
                row = queries.version_row(session, target)
                point_alias(session, row.adapter_id, alias, row.id)

        retry_conflicts(write, f"alias {name}@{alias}")  # created concurrently: update it
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
        with Session(self._writer) as session, session.begin():
            row = queries.version_row(session, _parse(ref))
            pointing = session.scalars(
                select(AliasRow.alias).where(AliasRow.version_id == row.id)
            ).all()
            name = queries.ref_of(session, row)
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
            deleted = session.execute(queries.info_query().where(VersionRow.id == row.id)).one()
        log.info("deleted %s", name)
        return queries.to_info(deleted, ())

    def purge(self, ref: str | AdapterRef) -> VersionInfo:
        """Remove a derived version (a mix: it lists components) for good: its rows, and its
        checkout here. Its blobs go with the next `gc`. Refused while an alias, an experiment
        or another version's lineage names it; a plain version is only ever `delete`d."""
        with Session(self._writer) as session, session.begin():
            row = queries.version_row(session, _parse(ref))
            name = queries.ref_of(session, row)
            info = queries.to_info(
                session.execute(queries.info_query().where(VersionRow.id == row.id)).one(), ()
            )
            if not queries.is_derived(session, row.id):
                raise SwitchboardError(
                    ErrorCode.CONFLICT, f"{name} is not a derived version; delete it instead"
                )
            named_by = queries.referrers(session, row.id)
            if named_by:
                raise SwitchboardError(
                    ErrorCode.CONFLICT, f"cannot purge {name}: {', '.join(named_by)} names it"
                )
            session.execute(delete(ComponentRow).where(ComponentRow.version_id == row.id))
            session.execute(delete(FileRow).where(FileRow.version_id == row.id))
            session.execute(delete(VersionRow).where(VersionRow.id == row.id))
            if not queries.exists(
                session, select(VersionRow.id).where(VersionRow.adapter_id == row.adapter_id)
            ):
                session.execute(delete(AdapterRow).where(AdapterRow.id == row.adapter_id))
        self._copies.drop(info.served_name)
        log.info("purged %s", name)
        return info

    # ---- files: integrity, checkout, export ----------------------------------------------

    def verify(
        self, ref: str | None = None, bases: Sequence[BaseModelInfo] = ()
    ) -> list[VerifyResult]:
        """Check one version, or every live one: re-hash its stored files, restore this
        machine's checkout of it if that was damaged, and check that the engines can load
        it, against its base when `bases` has it (versions published before a check existed
        are reported, not changed)."""
        by_fingerprint = {b.fingerprint: b for b in bases}
        if ref is not None:
            targets = [self.resolve(ref)]
        else:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    queries.info_query()
                    .where(VersionRow.deleted_at.is_(None))
                    .order_by(AdapterRow.name, VersionRow.version)
                ).all()
            targets = [queries.to_info(r, ()) for r in rows]
        checked: dict[tuple[str, int], str | None] = {}  # a blob shared by versions: hash once
        results = []
        for info in targets:
            files = self._files(info)
            problems = []
            for path, entry in files.items():
                key = (entry.sha256, entry.size)
                if key not in checked:
                    checked[key] = self.blobs.check(entry.sha256, entry.size)
                if checked[key] is not None:
                    problems.append(f"{path}: {checked[key]}")
            repaired: list[str] = []
            notes: list[str] = []
            if not problems:
                base = by_fingerprint.get(info.base_fingerprint)
                problems, repaired = self._check_loadable(info, files, base)
                if base is None:
                    notes.append(
                        f"its base ({info.base_fingerprint[:19]}…) is not on this machine: "
                        "shapes against it were not checked"
                    )
            results.append(VerifyResult(info.ref, tuple(problems), tuple(repaired), tuple(notes)))
        return results

    def _check_loadable(
        self, info: VersionInfo, files: dict[str, FileEntry], base: BaseModelInfo | None
    ) -> tuple[list[str], list[str]]:
        """(problems, repairs) of a version whose blobs are intact: its checkout here (if
        any) is verified, and restored from the blobs when damaged; the files are then
        checked."""
        manifest = lambda: self._manifest(info).to_json()  # noqa: E731
        repaired = []
        if self._copies.has_checkout(info.served_name):
            if not self._copies.intact(info.served_name, files):
                repaired.append("its checkout here was damaged and is restored from the blobs")
            directory = self._copies.checkout(info, files, manifest)
            return adapter_problems(directory, base), repaired
        with tempfile.TemporaryDirectory(prefix="switchboard-verify-") as tmp:
            self._copies.materialise(info, files, manifest(), Path(tmp) / "files")
            return adapter_problems(Path(tmp) / "files", base), repaired

    def gc(self, min_age_seconds: float = 3600.0, *, dry_run: bool = False) -> list[StoredBlob]:
        """Remove blobs no version references (left by publishes killed before their commit).

        Only files older than `min_age_seconds` go: a publish in flight writes its blobs
        before its rows, and must not lose them. Deleted versions keep their files.
        """
        with self._engine.connect() as conn:
            referenced = set(conn.scalars(select(FileRow.sha256).distinct()))
        cutoff = time.time() - min_age_seconds
        doomed = [
            blob
            for blob in self.blobs.stored()
            if blob.key not in referenced and blob.modified < cutoff
        ]
        if not dry_run:
            for blob in doomed:
                self.blobs.delete(blob.key)
            log.info("gc removed %d unreferenced files from %s", len(doomed), self.blobs.url)
        return doomed

    def checkout(
        self, ref: str | AdapterRef, base: BaseModelInfo | None = None
    ) -> tuple[VersionInfo, Path]:
        """A verified local directory of a version's files, for an engine to load; held
        (never evicted from the local cache) until this registry is closed. A version the
        engines cannot load (published before a check existed) is refused, naming it; the
        check runs once per version and process, against `base` when given."""
        info = self.resolve(ref)
        manifest = lambda: self._manifest(info).to_json()  # noqa: E731  # only when copying
        directory = self._copies.checkout(info, self._files(info), manifest)
        key = (info.served_name, base.fingerprint if base else None)
        if key not in self._servable:
            problems = adapter_problems(directory, base)
            if problems:
                raise SwitchboardError(
                    ErrorCode.UNLOADABLE,
                    f"{info.ref} cannot be served: {problems[0]} (run `switchboard registry "
                    "verify`; publish a fixed version)",
                )
            self._servable.add(key)
        return info, directory

    def export(self, ref: str | AdapterRef, dest: Path) -> Manifest:
        """Write a version's PEFT files and its manifest to `dest` (new or empty; not a link:
        writing through one would put the files somewhere the user did not name)."""
        if dest.is_symlink():
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, f"{dest} is a symbolic link; name a real directory"
            )
        existed = dest.exists()
        if existed and (not dest.is_dir() or any(dest.iterdir())):
            raise SwitchboardError(ErrorCode.ALREADY_EXISTS, f"{dest} exists and is not empty")
        info = self.resolve(ref)
        manifest = self._manifest(info)
        try:
            self._copies.materialise(info, self._files(info), manifest.to_json(), dest)
        except OSError as exc:
            if not existed:
                shutil.rmtree(dest, ignore_errors=True)
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, f"cannot write to {dest}: {exc.strerror or exc}"
            ) from exc
        return manifest

    def _files(self, info: VersionInfo) -> dict[str, FileEntry]:
        """The files a version is made of (versions published before publish left other
        files out may have more stored; they are never checked out or exported)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(FileRow.path, FileRow.sha256, FileRow.size)
                .join(VersionRow, VersionRow.id == FileRow.version_id)
                .where(VersionRow.served_name == info.served_name)
            ).all()
        return {p: FileEntry(sha256=s, size=n) for p, s, n in rows if p in ADAPTER_FILES}


def open_registry(settings: RegistrySettings) -> Registry:
    """The registry the settings describe: its database and its blob store."""
    blobs = open_blob_store(
        settings.blob_url, settings.home_dir, settings.blob_options, settings.blob_timeout_s
    )
    return Registry(
        settings.registry_url, settings.home_dir, blobs, cache_max_bytes=settings.cache_max_bytes
    )


def _aliases_by_version(conn: Any, name: str | None = None) -> dict[int, tuple[str, ...]]:
    """Version id -> its aliases, sorted: of adapter `name`, or of every adapter."""
    query = select(AliasRow.version_id, AliasRow.alias).order_by(AliasRow.alias)
    if name is not None:
        query = query.join(AdapterRow, AdapterRow.id == AliasRow.adapter_id).where(
            AdapterRow.name == name
        )
    found: dict[int, list[str]] = {}
    for version_id, alias in conn.execute(query):
        found.setdefault(version_id, []).append(alias)
    return {version_id: tuple(aliases) for version_id, aliases in found.items()}
