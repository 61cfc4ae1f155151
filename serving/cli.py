"""`switchboard serve`: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from registry.cli import settings_of


def serve(
    ctx: typer.Context,
    engine: Annotated[
        Literal["auto", "vllm", "hf"],
        typer.Option(
            help="vllm: multi-LoRA; hf: transformers+PEFT (also prefix adapters); "
            "auto: vllm when installed and it supports the base."
        ),
    ] = "auto",
    base: Annotated[
        Path | None, typer.Option(help="Base model: a cached name or a model directory.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the registry's adapters behind an OpenAI-compatible API (model=auto routes)."""
    import uvicorn

    from serving.app import create_app

    settings = settings_of(ctx)
    if base is not None:
        settings.base = str(base)
    settings.engine = engine
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
