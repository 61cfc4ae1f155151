"""What a training run is asked to do (`TrainConfig`) and what it gives back (`TrainResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from switchboard_lora.registry.bases import PROJECTIONS
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.manifest import ManifestDraft

DEFAULT_TARGETS = PROJECTIONS  # LoRA on every projection vLLM serves
_DEFAULT_LR = {"lora": 3e-4, "prefix": 3e-3}


class TrainingInterrupted(SwitchboardError):
    def __init__(self, steps: int) -> None:
        super().__init__(
            ErrorCode.INTERRUPTED, f"interrupted after {steps} steps: nothing saved or published"
        )
        self.steps = steps


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["lora", "prefix"] = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    num_virtual_tokens: int = 16
    epochs: float = 1.0
    lr: float | None = None  # default per method
    batch_size: int = 8
    max_length: int = 256
    eval_fraction: float = 0.1
    max_eval_examples: int = 200
    max_general_examples: int = 32
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    seed: int = 0
    routing_examples: int = 50

    def __post_init__(self) -> None:
        checks = {
            "method must be lora or prefix": self.method in ("lora", "prefix"),
            "rank must be >= 1": self.rank >= 1,
            "alpha must be > 0": self.alpha > 0,
            "dropout must be in [0, 1)": 0 <= self.dropout < 1,
            "target_modules must not be empty": bool(self.target_modules),
            "num_virtual_tokens must be >= 1": self.num_virtual_tokens >= 1,
            "epochs must be > 0": self.epochs > 0,
            "lr must be > 0": self.lr is None or self.lr > 0,
            "batch_size must be >= 1": self.batch_size >= 1,
            "max_length must be >= 8": self.max_length >= 8,
            "eval_fraction must be in [0, 0.5]": 0 <= self.eval_fraction <= 0.5,
            "max_eval_examples must be >= 0": self.max_eval_examples >= 0,
            "max_general_examples must be >= 0": self.max_general_examples >= 0,
            "max_steps must be >= 1": self.max_steps is None or self.max_steps >= 1,
            "routing_examples must be >= 0": self.routing_examples >= 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "; ".join(failed))

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else _DEFAULT_LR[self.method]

    def hyperparameters(self) -> dict[str, Any]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        values["lr"] = self.learning_rate
        return values


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    draft: ManifestDraft
    metrics: dict[str, float]
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)  # loss per step
    model: Any = field(default=None, repr=False)  # the trained PeftModel, still in memory
