"""What every command shares: the `--json` flag, output, and opening the registry and bases
from the settings the root command built."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from switchboard_lora.registry.bases import BaseModelInfo, BaseModels
    from switchboard_lora.registry.store import Registry
    from switchboard_lora.settings import Settings

JSON_OUTPUT = "switchboard.json"  # key in click's context meta, shared by nested contexts

JsonFlag = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document for scripts."),
]


def settings_of(ctx: typer.Context) -> Settings:
    from switchboard_lora.settings import Settings, from_environment

    settings = ctx.find_root().obj
    return settings if isinstance(settings, Settings) else from_environment()


def open_registry(ctx: typer.Context) -> Registry:
    from switchboard_lora.registry.store import open_registry as open_store

    registry = open_store(settings_of(ctx))
    ctx.call_on_close(registry.close)
    return registry


def open_bases(ctx: typer.Context) -> BaseModels:
    from switchboard_lora.registry.bases import BaseModels

    return BaseModels(settings_of(ctx).bases_dir)


def open_base(ctx: typer.Context, spec: str | None = None) -> BaseModelInfo:
    """The base named by `spec` (default: the settings'), or an error saying how to get it."""
    from switchboard_lora.base_pull import get_or_hint

    return get_or_hint(open_bases(ctx), spec or settings_of(ctx).base)


def emit(data: Any, as_json: bool, text: str | None = None) -> None:
    """Print JSON for scripts, or the human form (a table is rendered by the caller)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif text is not None:
        typer.echo(text)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def busy(message: str) -> Any:
    """A spinner on stderr while something slow runs."""
    from rich.console import Console

    return Console(stderr=True).status(message)
