"""Settings: built once by an entry point (from the environment and flags), passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.bases import DEFAULT_BASE


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore")

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
