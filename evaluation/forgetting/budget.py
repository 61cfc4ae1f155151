"""The forgetting report's sizes: the same rows and step budget for every method."""

from __future__ import annotations

from dataclasses import dataclass

from evaluation.forgetting.continual import Remedy
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError


@dataclass(frozen=True)
class Budget:
    """Sizes that keep the whole report within about 30 minutes on a 2-core CPU."""

    steps: int = 8  # per domain, every method, batches of `batch_size`
    batch_size: int = 8
    max_length: int = 192
    eval_rows: int = 16  # held-out rows per domain
    general_rows: int = 16  # XSum articles for perplexity (the last rows of the file)
    knowledge: int = 70  # general_knowledge questions (all of them)
    full_lr: float = 3e-5
    lora_lr: float = 3e-4
    replay: float = 0.25
    ewc_strength: float = 100.0  # λ, on a Fisher scaled to mean 1
    l2sp_strength: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "steps must be >= 1": self.steps >= 1,
            "batch_size must be >= 2 (replay takes a share of each batch)": self.batch_size >= 2,
            "max_length must be >= 8": self.max_length >= 8,
            "eval_rows must be >= 1": self.eval_rows >= 1,
            "general_rows must be >= 1": self.general_rows >= 1,
            "knowledge must be >= 1": self.knowledge >= 1,
            "learning rates must be > 0": self.full_lr > 0 and self.lora_lr > 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "; ".join(failed))

    def remedy(self, name: str) -> Remedy:
        return {
            "full": Remedy("full"),
            "replay": Remedy("replay", replay=self.replay),
            "ewc": Remedy("ewc", penalty="ewc", strength=self.ewc_strength),
            "l2sp": Remedy("l2sp", penalty="l2sp", strength=self.l2sp_strength),
        }[name]
