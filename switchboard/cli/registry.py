"""`switchboard registry …` commands: publish, list, alias, verify, export."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from switchboard_lora.cli.kit import (
    JsonFlag,
    emit,
    open_base,
    open_bases,
    open_registry,
    print_table,
    settings_of,
)
from switchboard_lora.registry.errors import SwitchboardError

if TYPE_CHECKING:
    from switchboard_lora.registry.records import VersionInfo

registry_app = typer.Typer(help="Versioned adapters: publish, list, alias, verify, export.")
alias_app = typer.Typer(help="Move or remove an alias (a pointer to a version).")
registry_app.add_typer(alias_app, name="alias")


def _version_rows(versions: list[VersionInfo]) -> list[list[Any]]:
    return [
        [
            v.ref,
            v.method,
            v.rank,
            ",".join(v.aliases),
            v.parent,
            v.served_name,
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            "deleted" if v.deleted else "",
        ]
        for v in versions
    ]


_VERSION_COLUMNS = ["ref", "method", "rank", "aliases", "parent", "served name", "created", ""]


@registry_app.command("publish")
def publish(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="A PEFT adapter directory.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name.")],
    parent: Annotated[
        str | None, typer.Option(help="The version this one was retrained from (a ref).")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Base it must fit: cached name or model directory.")
    ] = None,
    description: Annotated[
        str, typer.Option(help="What it is for, in a sentence (the router uses it too).")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Publish DIRECTORY as the next version of NAME."""
    from switchboard_lora.registry import ManifestDraft

    draft = ManifestDraft(description=description)
    manifest = open_registry(ctx).publish(
        directory, name, open_base(ctx, base), parent=parent, draft=draft
    )
    emit(
        {
            "name": manifest.name,
            "version": manifest.version,
            "ref": manifest.ref,
            "served_name": manifest.served_name,
            "content_digest": manifest.content_digest,
        },
        as_json,
        f"published {manifest.ref} ({manifest.served_name})",
    )


@registry_app.command("list")
def list_adapters(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List adapters: live version count, latest version, aliases."""
    adapters = open_registry(ctx).list_adapters()
    if as_json:
        emit([a.to_json() for a in adapters], True)
        return
    print_table(
        "adapters",
        ["name", "versions", "latest", "aliases"],
        [
            [a.name, a.versions, a.latest, " ".join(f"{k}->{v}" for k, v in a.aliases.items())]
            for a in adapters
        ],
    )


@registry_app.command("show")
def show(ctx: typer.Context, ref: str, as_json: JsonFlag = False) -> None:
    """Show a version's full manifest (REF: name, name:3 or name@alias)."""
    registry = open_registry(ctx)
    info = registry.resolve(ref)
    manifest = registry.manifest(info.ref)
    emit(
        {**manifest.model_dump(mode="json"), "ref": info.ref, "aliases": list(info.aliases)},
        as_json,
        manifest.to_json().rstrip(),
    )


@registry_app.command("versions")
def versions(
    ctx: typer.Context,
    name: str,
    include_deleted: Annotated[bool, typer.Option("--all", help="Include deleted ones.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List the versions of NAME."""
    found = open_registry(ctx).list_versions(name, include_deleted=include_deleted)
    if as_json:
        emit([v.to_json() for v in found], True)
        return
    print_table(f"versions of {name}", _VERSION_COLUMNS, _version_rows(found))


@alias_app.command("set")
def alias_set(
    ctx: typer.Context, name: str, alias: str, version: int, as_json: JsonFlag = False
) -> None:
    """Point NAME@ALIAS at VERSION (atomically; `prod` is what a bare NAME resolves to)."""
    info = open_registry(ctx).set_alias(name, alias, version)
    emit(
        {"name": name, "alias": alias, "version": info.version, "ref": info.ref},
        as_json,
        f"{name}@{alias} -> {info.ref}",
    )


@alias_app.command("rm")
def alias_rm(ctx: typer.Context, name: str, alias: str, as_json: JsonFlag = False) -> None:
    """Remove the alias NAME@ALIAS."""
    open_registry(ctx).remove_alias(name, alias)
    emit({"name": name, "alias": alias, "removed": True}, as_json, f"removed {name}@{alias}")


@registry_app.command("delete")
def delete_version(ctx: typer.Context, ref: str, as_json: JsonFlag = False) -> None:
    """Soft-delete a version (refused while an alias points to it)."""
    info = open_registry(ctx).delete(ref)
    emit(info.to_json(), as_json, f"deleted {info.ref}")


@registry_app.command("verify")
def verify(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="One version; default: every one.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash stored files, restore damaged checkouts, check versions load; exit 1 on a problem."""
    bases = open_bases(ctx)
    known = bases.list()
    with contextlib.suppress(SwitchboardError):  # the configured base too, if it is a path
        known.append(bases.get(settings_of(ctx).base))
    results = open_registry(ctx).verify(ref, known)
    bad = [r for r in results if not r.ok]
    if as_json:
        emit(
            {
                "ok": not bad,
                "checked": len(results),
                "versions": [
                    {
                        "ref": r.ref,
                        "ok": r.ok,
                        "problems": list(r.problems),
                        "repaired": list(r.repaired),
                        "notes": list(r.notes),
                    }
                    for r in results
                ],
            },
            True,
        )
    else:
        for r in results:
            for note in r.repaired + r.notes:
                typer.echo(f"{r.ref}: {note}", err=True)
        for r in bad:
            typer.echo(f"{r.ref}: {'; '.join(r.problems)}", err=True)
        typer.echo(f"{len(results) - len(bad)} of {len(results)} versions intact")
    if bad:
        raise typer.Exit(1)


@registry_app.command("gc")
def gc(
    ctx: typer.Context,
    min_age: Annotated[
        float, typer.Option(help="Only files older than this many seconds (in-flight publishes).")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option(help="List what would go; remove nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove stored files that no version references (left by interrupted publishes)."""
    removed = open_registry(ctx).gc(min_age, dry_run=dry_run)
    size = sum(blob.size for blob in removed) if dry_run else None
    emit(
        {"removed": len(removed), "dry_run": dry_run, "bytes": size},
        as_json,
        f"{'would remove' if dry_run else 'removed'} {len(removed)} unreferenced files",
    )


@registry_app.command("export")
def export(ctx: typer.Context, ref: str, directory: Path, as_json: JsonFlag = False) -> None:
    """Write a version's PEFT files and manifest to DIRECTORY (new or empty)."""
    manifest = open_registry(ctx).export(ref, directory)
    emit(
        {"ref": manifest.ref, "path": str(directory), "files": sorted(manifest.files)},
        as_json,
        f"exported {manifest.ref} to {directory}",
    )


@registry_app.command("upgrade")
def upgrade(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Apply pending schema migrations to the registry database (every replica may then run
    the new Switchboard)."""
    from switchboard_lora.registry.db import open_engine
    from switchboard_lora.registry.migrate import upgrade as apply

    engine = open_engine(settings_of(ctx).registry_url)
    try:
        before, after = apply(engine)
    finally:
        engine.dispose()
    text = (
        f"already at schema revision {after}"
        if before == after
        else (f"schema revision {before or 'none (new database)'} -> {after}")
    )
    emit({"from": before, "to": after, "changed": before != after}, as_json, text)
