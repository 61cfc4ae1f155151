"""`switchboard serve` (the OpenAI-compatible server) and `switchboard demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from switchboard_lora.cli.kit import JsonFlag, emit, open_base, settings_of


def serve(
    ctx: typer.Context,
    engine: Annotated[
        Literal["auto", "vllm", "hf"],
        typer.Option(
            help="vllm: multi-LoRA; hf: transformers+PEFT (also prefix adapters); "
            "auto: on a GPU vllm when installed and it supports the base, else hf."
        ),
    ] = "auto",
    device: Annotated[
        str | None,
        typer.Option(
            help="auto, cpu, cuda or cuda:N (default: SWITCHBOARD_DEVICE, else auto: CUDA "
            "where torch sees a GPU)."
        ),
    ] = None,
    base: Annotated[
        Path | None, typer.Option(help="Base model: a cached name or a model directory.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            help="Be a gateway: send generation to this OpenAI-compatible server (`vllm "
            "serve` with Switchboard's resolver, or `switchboard serve`); repeatable."
        ),
    ] = None,
) -> None:
    """Serve the registry's adapters behind an OpenAI-compatible API (model=auto routes)."""
    import uvicorn

    from switchboard_lora.registry.store import open_registry
    from switchboard_lora.serving.http.app import create_app

    settings = settings_of(ctx)
    if base is not None:
        settings.base = str(base)
    settings.engine = engine
    if device is not None:
        settings.device = device
    if upstream:
        settings.upstreams = upstream
    open_base(ctx, settings.base)  # a missing base fails here, saying how to get it
    open_registry(settings).close()  # so do a damaged or unreachable registry database
    if settings.encoder is None:  # on a GPU the strong encoder, pulled on first use
        from switchboard_lora.encoder_pull import encoder_for
        from switchboard_lora.router.devices import torch_device
        from switchboard_lora.router.encoder_cache import EncoderModels

        device = torch_device(settings.encoder_device or settings.device, "encoder device")
        settings.encoder, why = encoder_for(device, EncoderModels(settings.home_dir / "encoders"))
        typer.echo(why, err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


def demo(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny budgets: minutes, not a quarter of an hour.")
    ] = False,
    engine: Annotated[
        Literal["auto", "vllm", "hf"],
        typer.Option(help="Serving engine; hf (transformers+PEFT) starts in seconds."),
    ] = "hf",
    data: Annotated[
        Path | None,
        typer.Option(help="Demo data folder (default: ./data, else built in the home)."),
    ] = None,
    ask: Annotated[
        list[str] | None,
        typer.Option(help="Send this request instead of the built-in set (repeatable)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """From nothing: pull the base, train + publish an adapter per demo domain (reused on later
    runs), serve in process, send mixed requests with model=auto and show what served each."""
    from rich.console import Console

    from switchboard_lora.demo import run_demo

    settings = settings_of(ctx)
    settings.engine = engine
    console = Console(stderr=True)
    report = run_demo(settings, quick=quick, data=data, questions=ask, say=console.print)
    if as_json:
        emit(report, True)
        return
    for row in report["rows"]:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in list(row["scores"].items())[:3])
        mark = "" if row["expected"] == "?" or row["as_expected"] else "   (unexpected)"
        typer.echo(f"[{row['expected']} -> {row['route']}]  {scores}{mark}")
        typer.echo(f"  Q: {_cut(row['request'], 96)}")
        typer.echo(f"  A: {_cut(row['answer'], 96)}")
    if report["as_expected"] is not None:
        typer.echo(f"{report['as_expected']} of {len(report['rows'])} went where expected")
    typer.echo(f"demo took {report['seconds']:.0f} s; `switchboard serve` serves these adapters")


def _cut(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
