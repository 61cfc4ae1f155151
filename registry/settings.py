"""Where the registry lives. A plain model: it never reads the environment (only the root
entry point does, `switchboard_lora.settings`), so a test or a scratch registry built from it
cannot reach an operator's shared registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from switchboard_lora.registry.bases import DEFAULT_BASE
from switchboard_lora.registry.blobs.base import DEFAULT_TIMEOUT_S


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
    blob_url: str | None = Field(
        None,
        description="where adapter files are stored: default local files under `home`; "
        "s3://BUCKET/PREFIX for an S3-compatible object store shared by every machine "
        "(endpoint and credentials as S3 clients take them: AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, …)",
    )
    blob_options: dict[str, str] = Field(
        default_factory=dict,
        description='object-store client settings (JSON), e.g. {"aws_endpoint": '
        '"http://127.0.0.1:9000", "allow_http": "true"}',
    )
    blob_timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        description="an object store silent this long is retried, then unavailable (a 503 "
        "naming it): a call fails within about twice this",
    )
    cache_max_bytes: int | None = Field(
        None,
        ge=0,
        description="bound on this machine's checked-out copies of versions (for an object "
        "store, its download cache); past it the least recently used that no process holds "
        "are removed. Default: unbounded",
    )
    base: str = Field(
        default=DEFAULT_BASE,
        description="default base model: a name in the base cache or a model directory",
    )

    @field_validator("blob_options", mode="before")
    @classmethod
    def _scalars_as_text(cls, options: Any) -> Any:
        """JSON's true and 5 as the client's "true" and "5" (it takes text only)."""
        if not isinstance(options, dict):
            return options
        return {
            k: (str(v).lower() if isinstance(v, bool) else str(v))
            if isinstance(v, bool | int | float)
            else v
            for k, v in options.items()
        }

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'registry.db'}"

    @property
    def bases_dir(self) -> Path:
        return self.home_dir / "bases"
