"""The `switchboard` command line: one module per command group, assembled in `main`."""

from switchboard_lora.cli.main import app, main

__all__ = ["app", "main"]
