"""`switchboard base …` commands: pull the default base model, list the cached ones."""

from __future__ import annotations

from typing import Annotated

import typer

from switchboard_lora.cli.kit import JsonFlag, busy, emit, open_bases, print_table, settings_of

base_app = typer.Typer(help="Base models: pull the default one, list what is cached.")


@base_app.command("pull")
def base_pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A known base model name.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Convert a known base model into the local cache, once (later calls find it)."""
    from switchboard_lora.base_pull import pull

    name = name or settings_of(ctx).base
    with busy(f"pulling {name} (download + conversion, once)…"):
        info, built = pull(open_bases(ctx), name)
    emit(
        {**info.to_json(), "converted": built},
        as_json,
        f"{'converted' if built else 'already cached'}: {info.id} at {info.path}\n"
        f"fingerprint {info.fingerprint}",
    )


@base_app.command("list")
def base_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List cached base models with their paths and fingerprints."""
    bases = open_bases(ctx).list()
    if as_json:
        emit([b.to_json() for b in bases], True)
        return
    print_table(
        "base models",
        ["name", "fingerprint", "source", "path"],
        [[b.id, b.fingerprint[:23] + "…", b.source, b.path] for b in bases],
    )
