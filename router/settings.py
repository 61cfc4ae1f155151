"""How the router scores and decides. A plain model: entry points fill it in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RouterSettings(BaseModel):
    encoder: str | None = Field(
        default=None,
        description="the router's sentence encoder: a pulled encoder's name (`switchboard "
        "encoder pull`) or a sentence-transformers directory; default: all-MiniLM-L6-v2, "
        "installed with Switchboard",
    )
    encoder_device: str | None = Field(
        default=None,
        description="where the encoder runs: auto, cpu, cuda or cuda:N; default: the "
        "engine's device (SWITCHBOARD_DEVICE): a larger encoder costs little on a GPU",
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
        description="the in-domain score (about: the share of general requests a request is "
        "nearer to its route than they are to theirs) below which the answer is the base, "
        "unless calibrated; default: 0.9",
    )
    router_general: bool = Field(
        default=True,
        description="weigh requests against the general requests shipped with Switchboard, "
        "so that one belonging to no route goes to the base even without `base` examples",
    )
    router_top_k: int = Field(
        default=1, ge=1, description="mix up to this many LoRA adapters (1: never mix)"
    )
    router_temperature: float = Field(
        default=1.0, gt=0.0, description="softmax temperature of a mix's weights"
    )
