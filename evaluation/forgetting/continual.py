"""Full fine-tuning of the whole base, domain after domain: the forgetting baseline, and the
remedies that the continual-learning literature recommends against forgetting.

- replay (experience replay, e.g. Rolnick et al., 2019): a share of every batch is drawn from
  the earlier domains' training rows and from general text;
- EWC (Kirkpatrick et al., 2017) in its online form (Schwarz et al., 2018): after each domain a
  diagonal empirical Fisher F is estimated on its data and added to the running F, θ* moves to
  the weights reached, and later training pays λ/2 · Σ Fᵢ (θᵢ - θᵢ*)²;
- L2-SP (Li et al., 2018): the same penalty with F = 1 and θ* the pretrained weights.

Each domain's Fisher is scaled to mean 1, so λ means the same for EWC and L2-SP whatever the
loss's scale. The penalty's gradient λ·F·(θ - θ*) is added to each parameter's gradient
directly: the same as differentiating the penalty, without an autograd graph over 135 M
elements.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.trainer.encoding import Encoded, collate, length_grouped_batches
from switchboard_lora.trainer.loop import adamw_with_warmup
from switchboard_lora.trainer.losses import batch_loss

if TYPE_CHECKING:
    import torch

Penalty = Literal["none", "ewc", "l2sp"]


@dataclass(frozen=True)
class Remedy:
    """How full fine-tuning is protected against forgetting (nothing, for the baseline)."""

    name: str
    replay: float = 0.0  # share of each batch drawn from earlier domains and general text
    penalty: Penalty = "none"
    strength: float = 0.0  # λ
    fisher_samples: int = 16  # examples per domain for EWC's Fisher (one backward each)

    def __post_init__(self) -> None:
        if not 0 <= self.replay < 1:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "replay must be in [0, 1)")
        if self.penalty != "none" and self.strength <= 0:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"{self.name}: λ must be > 0")


@dataclass(frozen=True)
class Schedule:
    steps: int  # per domain
    batch_size: int = 8
    lr: float = 3e-5
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0


class Anchor:
    """The quadratic penalty's centre θ* and per-parameter weights F (None: F = 1)."""

    def __init__(self, params: list[torch.nn.Parameter], fisher: list[torch.Tensor] | None):
        self.params = params
        self.centre = [p.detach().clone() for p in params]
        self.fisher = fisher

    def add_gradient(self, strength: float) -> None:
        """p.grad += λ · F · (p - θ*), the gradient of λ/2 · Σ F (p - θ*)²."""
        import torch

        with torch.no_grad():
            for i, (param, centre) in enumerate(zip(self.params, self.centre, strict=True)):
                if param.grad is None:
                    continue
                pull = param.detach() - centre
                if self.fisher is not None:
                    pull.mul_(self.fisher[i])
                param.grad.add_(pull, alpha=strength)

    def value(self, strength: float) -> float:
        """λ/2 · Σ F (θ - θ*)²: how far training has moved from the anchor."""
        import torch

        total = 0.0
        with torch.no_grad():
            for i, (param, centre) in enumerate(zip(self.params, self.centre, strict=True)):
                square = (param.detach() - centre).square()
                total += float((square * self.fisher[i] if self.fisher else square).sum())
        return strength / 2 * total


def fisher_diagonal(
    model: Any, params: list[torch.nn.Parameter], examples: Sequence[Encoded], pad_id: int
) -> list[torch.Tensor]:
    """Mean squared per-example gradient of the loss (the empirical Fisher's diagonal),
    scaled so that its mean over all parameters is 1."""
    import torch

    device = next(model.parameters()).device
    squares = [torch.zeros_like(p) for p in params]
    model.train()
    for example in examples:
        model.zero_grad(set_to_none=True)
        loss_sum, n = batch_loss(model, collate([example], pad_id, device))
        (loss_sum / max(n, 1)).backward()
        with torch.no_grad():
            for square, param in zip(squares, params, strict=True):
                if param.grad is not None:
                    square.add_(param.grad.square())
    model.zero_grad(set_to_none=True)
    mean = sum(float(s.sum()) for s in squares) / sum(s.numel() for s in squares)
    if mean <= 0:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "the Fisher estimate is zero")
    for square in squares:
        square.div_(mean)
    return squares


class SequentialFineTuner:
    """One model, trained in full on domain after domain under a `Remedy`."""

    def __init__(
        self,
        model: Any,
        remedy: Remedy,
        schedule: Schedule,
        pad_id: int,
        general: Sequence[Encoded] = (),
    ) -> None:
        self.model = model
        self.remedy = remedy
        self.schedule = schedule
        self.pad_id = pad_id
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.replay_pool: list[Encoded] = list(general)
        self.rng = random.Random(schedule.seed)
        self.anchor: Anchor | None = None
        if remedy.penalty == "l2sp":
            self.anchor = Anchor(self.params, None)
        self.fisher: list[torch.Tensor] | None = None
        self.history: list[float] = []

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def train_domain(self, data: Sequence[Encoded], progress: Any = None) -> float:
        """Train `schedule.steps` steps on `data` (plus replay); return the seconds it took,
        the Fisher estimate included."""
        import torch

        started = time.perf_counter()
        schedule = self.schedule
        device = next(self.model.parameters()).device
        optimizer, lr_schedule = adamw_with_warmup(
            self.params, schedule.lr, schedule.warmup_ratio, schedule.steps
        )
        self.model.train()
        for indices in self._batches([len(e.input_ids) for e in data]):
            rows = [data[i] for i in indices] + self._replay_rows()
            loss_sum, n = batch_loss(self.model, collate(rows, self.pad_id, device))
            loss = loss_sum / max(n, 1)
            loss.backward()
            if self.anchor is not None:
                self.anchor.add_gradient(self.remedy.strength)
            torch.nn.utils.clip_grad_norm_(self.params, schedule.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            self.history.append(loss.item())
            if progress is not None:
                progress.update(1)
        self.replay_pool += data
        if self.remedy.penalty == "ewc":
            sample = self.rng.sample(list(data), min(self.remedy.fisher_samples, len(data)))
            fisher = fisher_diagonal(self.model, self.params, sample, self.pad_id)
            if self.fisher is not None:  # online EWC: one running Fisher, θ* moves on
                for total, new in zip(self.fisher, fisher, strict=True):
                    total.add_(new)
            else:
                self.fisher = fisher
            self.anchor = Anchor(self.params, self.fisher)
        return time.perf_counter() - started

    def _replay_share(self) -> int:
        if not self.remedy.replay or not self.replay_pool:
            return 0
        return max(1, round(self.schedule.batch_size * self.remedy.replay))

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """`steps` batches of new data (the rest of each batch is replay), in length groups."""
        per_batch = self.schedule.batch_size - self._replay_share()
        batches: list[list[int]] = []
        while len(batches) < self.schedule.steps:
            epoch = length_grouped_batches(lengths, per_batch, self.rng)
            batches += [b for b in epoch if len(b) == per_batch] or epoch  # no ragged ends
        return batches[: self.schedule.steps]

    def _replay_rows(self) -> list[Encoded]:
        return self.rng.sample(self.replay_pool, min(self._replay_share(), len(self.replay_pool)))
