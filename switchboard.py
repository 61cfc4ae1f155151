"""The `switchboard` command: assembles each package's own commands, maps errors once."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from registry.cli import base_app, registry_app
from registry.errors import ErrorCode, SwitchboardError
from registry.experiment_cli import experiment_app
from router.cli import route_app
from serving.cli import demo, serve
from trainer.cli import data_app, train

app = typer.Typer(
    help="Switchboard: many fine-tuned domains on one frozen base model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(base_app, name="base")
app.add_typer(registry_app, name="registry")
app.add_typer(data_app, name="data")
app.add_typer(route_app, name="route")
app.add_typer(experiment_app, name="experiment")
app.command("train")(train)
app.command("serve")(serve)
app.command("demo")(demo)

# Exit status per error kind, so scripts can tell "not there" from "broken".
EXIT_CODES = {
    ErrorCode.NOT_FOUND: 3,
    ErrorCode.INTEGRITY: 4,
    ErrorCode.CONFLICT: 5,
    ErrorCode.ALREADY_EXISTS: 5,
    ErrorCode.INCOMPATIBLE_BASE: 6,
    ErrorCode.INTERRUPTED: 130,
}


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
    from registry.settings import Settings

    settings = Settings()  # the environment (SWITCHBOARD_*), then flags on top
    if home is not None:
        settings.home = home
    if database_url is not None:
        settings.database_url = database_url
    ctx.obj = settings


def main() -> None:
    # Models come from local files and packages only: never wait on (or phone) a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()  # click's standalone mode: usage errors, --help and exit codes handled there
    except SwitchboardError as exc:  # ours propagate through it: one mapping, here
        if "--json" in sys.argv:
            error = {"error": {"code": exc.code.value, "message": exc.message}}
            sys.stdout.write(json.dumps(error) + "\n")
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_CODES.get(exc.code, 1))


if __name__ == "__main__":
    main()
