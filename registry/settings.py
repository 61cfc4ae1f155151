"""Where the registry lives. A plain model: it never reads the environment (only the root
entry point does, `switchboard.settings`), so a test or a scratch registry built from it
cannot reach an operator's shared registry."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from registry.bases import DEFAULT_BASE


class RegistrySettings(BaseModel):
    home: Path = Field(
        default=Path("~/.switchboard"),
        description="where adapter files, base models and the SQLite registry live",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the registry; default: SQLite under `home`. "
        "Use postgresql+psycopg://… where several servers share one registry.",
    )
    base: str = Field(
        default=DEFAULT_BASE,
        description="default base model: a name in the base cache or a model directory",
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'registry.db'}"

    @property
    def bases_dir(self) -> Path:
        return self.home_dir / "bases"
