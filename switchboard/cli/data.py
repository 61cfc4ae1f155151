"""`switchboard data build`: the demo data, from real public sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from switchboard_lora.cli.kit import JsonFlag, busy, emit, settings_of

data_app = typer.Typer(help="Demo data from real public sources.")


@data_app.command("build")
def data_build(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Where to write the domains.")] = Path("data"),
    sdist: Annotated[
        Path | None,
        typer.Option(help="A downloaded bigbench-1.0.0.tar.gz (default: pip downloads it)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build the demo domains (math, sql, science, code, dialogue) and a general-text sample."""
    from switchboard_lora.demo_data import bigbench_sdist, build

    with busy("building demo data (BIG-bench sdist, 358 MB, once)…"):
        archive = sdist or bigbench_sdist(settings_of(ctx).home_dir)
        counts = build(out, archive)
    emit(
        {"out": str(out), "domains": counts},
        as_json,
        "\n".join(f"{out / d}: {c}" for d, c in counts.items()),
    )
