"""What a server needs: where the registry is, how to route, which engine, which keys.

Plain models (entry points fill them in; `switchboard_lora.settings` from the environment). A
server builds the registry and the router itself, so its settings are theirs plus its own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from switchboard_lora.registry.settings import RegistrySettings
from switchboard_lora.router.settings import RouterSettings

LogMode = Literal["off", "sample", "uncertain", "all"]

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM sizes its buffers for


class EngineSettings(BaseModel):
    engine: Literal["auto", "vllm", "hf"] = Field(
        default="auto",
        description="serving engine: vllm (multi-LoRA), hf (transformers+PEFT, also serves "
        "prefix adapters) or auto (on a GPU vllm where installed and it supports the base, "
        "else hf; on the CPU hf, which batches mixed adapters faster than vLLM-CPU)",
    )
    device: str = Field(
        default="auto",
        description="where the engine (and the router's encoder, unless its own is set) "
        "runs: auto (CUDA where torch sees a GPU, else the CPU), cpu, cuda or cuda:N",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description="weights' dtype in the serving engine; default: bfloat16 on a GPU, "
        "float32 on the CPU",
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        description="transformers engine: requests decoding together at most; default: 32 "
        "on the CPU, 256 on a GPU",
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
    upstreams: list[str] = Field(
        default_factory=list,
        description="a gateway: OpenAI-compatible servers generation goes to (`vllm serve` "
        "with Switchboard's resolver, or `switchboard serve`), as a JSON list of base URLs, "
        "instead of an engine in this process",
    )
    upstream_max_in_flight: int = Field(
        default=16,
        ge=1,
        description="gateway: requests on an upstream before an adapter's "
        "requests spill to its next upstream",
    )
    upstream_policy: Literal["affinity", "round-robin"] = Field(
        default="affinity",
        description="gateway: affinity keeps each adapter on as few upstreams as its load "
        "needs (rendezvous hashing); round-robin spreads every request",
    )
    upstream_health_s: float = Field(
        default=5.0, gt=0, description="gateway: seconds between upstream health checks"
    )
    upstream_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="gateway: seconds to open a connection to an upstream"
    )
    upstream_first_token_timeout_s: float = Field(
        default=25.0,
        gt=0,
        description="gateway: seconds an upstream may take to its first token (one retry on "
        "another upstream follows)",
    )
    upstream_token_timeout_s: float = Field(
        default=20.0, gt=0, description="gateway: seconds an upstream may go silent mid-answer"
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _a_vllm_rank(cls, rank: int) -> int:
        if rank not in LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, LORA_RANKS))}")
        return rank


class ServerSettings(RegistrySettings, RouterSettings, EngineSettings):
    api_keys: list[str] = Field(
        default_factory=list,
        description="keys a client may generate with (JSON list); none: no key needed",
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description="keys that may also change the registry through the API (JSON list)",
    )
    open_docs: bool = Field(
        default=False,
        description="serve /docs, /redoc and /openapi.json without a key when keys are "
        "configured (they need one otherwise)",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="largest request body taken (413 past it)"
    )
    requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="per API key (or client address without keys): generation requests a "
        "minute, bursts up to that many (429 past it); none: no limit",
    )
    feedback_per_minute: float | None = Field(
        default=None, gt=0, description="per API key (or address): feedback posts a minute"
    )
    route_log: LogMode = Field(
        default="off",
        description="routing decisions logged for review, with their request text: off, "
        "sample, uncertain or all (`switchboard route review`)",
    )
    route_log_sample: float = Field(
        default=0.05, gt=0, le=1, description="the share of decisions logged in `sample` mode"
    )
    mix_allow: list[str] = Field(
        default_factory=list,
        description='adapter names a client key may mix (JSON list; ["*"]: any); an admin '
        "key may always mix; with no keys configured, anyone may",
    )
    mix_weight_step: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="client mix weights are rounded to this step before a mix is named",
    )
    max_mixes: int = Field(
        default=32,
        ge=1,
        description="mixes kept in the registry; past it, the least recently used mix is deleted",
    )
