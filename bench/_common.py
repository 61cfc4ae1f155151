"""What the benchmarks share. They never read `SWITCHBOARD_*`: the base comes from the default
home (`~/.switchboard`, or `--home`), and every registry they write is a scratch one."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from switchboard_lora.base_pull import pull
from switchboard_lora.registry import BaseModelInfo, BaseModels, RegistrySettings
from switchboard_lora.registry.errors import SwitchboardError

HomeOption = Annotated[
    Path | None,
    typer.Option(
        help="Where the base model is cached (default ~/.switchboard; never read "
        "from SWITCHBOARD_HOME)."
    ),
]


def pulled_encoder(name: str, home: Path | None = None) -> Path:
    """The model directory of encoder `name` (the default, or one pulled into `home` once)."""
    from switchboard_lora.encoder_pull import CATALOG, pull
    from switchboard_lora.router.encoder_cache import EncoderModels

    settings = RegistrySettings() if home is None else RegistrySettings(home=home)
    encoders = EncoderModels(settings.home_dir / "encoders")
    if name in CATALOG:
        pull(encoders, name)
    return encoders.get(name)


def default_base(home: Path | None = None) -> BaseModelInfo:
    """The default base model, pulled into `home`'s cache once."""
    settings = RegistrySettings() if home is None else RegistrySettings(home=home)
    base, _ = pull(BaseModels(settings.bases_dir), settings.base)
    return base


def run_benchmark(main: Callable[..., Any]) -> None:
    """A benchmark's command line: what the user can act on (data missing, a setting) is one
    line on stderr and exit code 2, as the CLI says it; a bug keeps its traceback."""
    try:
        typer.run(main)
    except SwitchboardError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
