"""The `switchboard` command: assembles every command group, maps errors to exit codes once."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from switchboard_lora.cli.base import base_app
from switchboard_lora.cli.data import data_app
from switchboard_lora.cli.encoder import encoder_app
from switchboard_lora.cli.experiment import experiment_app
from switchboard_lora.cli.kit import JSON_OUTPUT
from switchboard_lora.cli.registry import registry_app
from switchboard_lora.cli.route import route_app
from switchboard_lora.cli.serve import demo, serve
from switchboard_lora.cli.train import train
from switchboard_lora.registry.db import unusable
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

# Exit status per error kind, so scripts can tell "not there" from "broken".
EXIT_CODES = {
    ErrorCode.NOT_FOUND: 3,
    ErrorCode.INTEGRITY: 4,
    ErrorCode.DATABASE: 4,
    ErrorCode.CONFLICT: 5,
    ErrorCode.ALREADY_EXISTS: 5,
    ErrorCode.INCOMPATIBLE_BASE: 6,
    ErrorCode.INTERRUPTED: 130,
}


class _Root(TyperGroup):
    """Turns a SwitchboardError from any command into its message and exit status; as JSON
    too when the command was given `--json` (seen in the arguments before any is parsed, so
    that an error of the settings, read before the command's own flags, is JSON too)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        flags = args[: args.index("--")] if "--" in args else args
        ctx.meta[JSON_OUTPUT] = "--json" in flags
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        from sqlalchemy.exc import DBAPIError

        try:
            try:
                return super().invoke(ctx)
            except DBAPIError as exc:  # the database failed after it opened: one line too
                raise unusable(getattr(ctx.obj, "registry_url", "?"), exc) from None
        except SwitchboardError as exc:
            if ctx.meta.get(JSON_OUTPUT):
                error = {"error": {"code": exc.code.value, "message": exc.message}}
                sys.stdout.write(json.dumps(error) + "\n")
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(EXIT_CODES.get(exc.code, 1)) from None


app = typer.Typer(
    cls=_Root,
    help="Switchboard: many fine-tuned domains on one frozen base model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(base_app, name="base")
app.add_typer(registry_app, name="registry")
app.add_typer(data_app, name="data")
app.add_typer(route_app, name="route")
app.add_typer(encoder_app, name="encoder")
app.add_typer(experiment_app, name="experiment")
app.command("train")(train)
app.command("serve")(serve)
app.command("demo")(demo)


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(help="Switchboard home (default $SWITCHBOARD_HOME or ~/.switchboard)."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Registry database URL (default: SQLite in home).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from switchboard_lora.settings import from_environment

    settings = from_environment()  # the environment (SWITCHBOARD_*), then flags on top
    if home is not None:
        settings.home = home
    if database_url is not None:
        settings.database_url = database_url
    ctx.obj = settings


def main() -> None:
    # Models come from local files and packages only: never wait on (or phone) a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()
