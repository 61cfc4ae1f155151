"""PEFT training on a frozen base: LoRA or prefix tuning, one domain at a time.

The loop is plain PyTorch: length-grouped batches (little padding), the loss taken only on
answer tokens, evaluation before and after on held-out domain data and on general text.
The base is frozen and the code checks it: no base parameter may require grad, and a digest
of the base weights is the same before and after training.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.manifest import MANIFEST_FILE, BaseRef, DataInfo, ManifestDraft
from switchboard_lora.trainer.config import TrainConfig, TrainingInterrupted, TrainResult
from switchboard_lora.trainer.data import Dataset, Example
from switchboard_lora.trainer.encoding import (
    Encoded,
    collate,
    encode,
    length_grouped_batches,
    pad_id,
)
from switchboard_lora.trainer.losses import autocast, batch_loss, mean_loss
from switchboard_lora.trainer.peft_setup import (
    assert_frozen,
    base_digest,
    init_prefix_from_text,
    peft_config,
)

log = logging.getLogger(__name__)


def split(dataset: Dataset, config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """A seeded held-out split (at most `max_eval_examples`)."""
    examples = list(dataset.examples)
    random.Random(config.seed).shuffle(examples)
    n_eval = min(int(len(examples) * config.eval_fraction), config.max_eval_examples)
    if config.eval_fraction > 0 and len(examples) >= 4:
        n_eval = max(n_eval, 1)
    return examples[n_eval:], examples[:n_eval]


def routing_sample(examples: Sequence[Example], count: int, seed: int) -> list[str]:
    """A deduplicated, seeded sample of the requests in the training data."""
    seen: dict[str, str] = {}
    for example in examples:
        text = " ".join(example.request.split())
        seen.setdefault(text.casefold(), text)
    unique = sorted(seen.values())
    random.Random(seed).shuffle(unique)
    return unique[:count]


def adamw_with_warmup(
    params: Sequence[Any], lr: float, warmup_ratio: float, total_steps: int
) -> tuple[Any, Any]:
    """AdamW (no weight decay); linear warmup, then linear decay to zero at `total_steps`."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, int(total_steps * warmup_ratio))
    decay = max(1, total_steps - warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / decay))
    )
    return optimizer, schedule


def train_adapter(
    base: BaseModelInfo,
    train_data: Dataset,
    config: TrainConfig,
    out_dir: Path,
    *,
    eval_data: Dataset | None = None,
    general_data: Dataset | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one adapter on the frozen `base`; save it (PEFT files + draft manifest).

    Ctrl-C at any point (loading, evaluating, training) raises `TrainingInterrupted`.
    """
    history: list[float] = []  # the loss of every finished step, readable after an interrupt
    try:
        return _train(base, train_data, config, out_dir, eval_data, general_data, progress, history)
    except KeyboardInterrupt:
        raise TrainingInterrupted(len(history)) from None


@dataclass(frozen=True)
class _Sets:
    """A run's examples, encoded: what it trains on and what it measures."""

    train_examples: list[Example]  # the rows trained on, before encoding
    train: list[Encoded]
    held_out: list[Encoded]
    general: list[Encoded]


def _encode_sets(
    tokenizer: Any,
    train_data: Dataset,
    eval_data: Dataset | None,
    general_data: Dataset | None,
    config: TrainConfig,
) -> _Sets:
    train_examples, held_out = split(train_data, config)
    if eval_data is not None:  # an explicit eval file replaces the split
        train_examples = list(train_data.examples)
        held_out = list(eval_data.examples)[: config.max_eval_examples]

    def encode_all(examples: Sequence[Example]) -> list[Encoded]:
        encoded = [encode(tokenizer, e, config.max_length) for e in examples]
        return [e for e in encoded if e is not None]

    general = general_data.examples[: config.max_general_examples] if general_data else []
    sets = _Sets(
        train_examples, encode_all(train_examples), encode_all(held_out), encode_all(general)
    )
    dropped = len(train_examples) - len(sets.train)
    if dropped:
        log.warning(
            "%d training rows left no answer token within %d tokens", dropped, config.max_length
        )
    if not sets.train:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "no training example fits max_length")
    return sets


def _total_steps(config: TrainConfig, train_rows: int) -> int:
    per_epoch = math.ceil(train_rows / config.batch_size)
    total = max(1, round(per_epoch * config.epochs))
    return total if config.max_steps is None else min(total, config.max_steps)


def _optimise(
    model: Any,
    train_set: list[Encoded],
    config: TrainConfig,
    pad: int,
    progress: bool,
    history: list[float],
) -> int:
    """The training steps themselves; the loss of each lands in `history` as it finishes.
    Returns how many tokens (padding excluded) were trained on."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = _total_steps(config, len(train_set))
    optimizer, schedule = adamw_with_warmup(
        params, config.learning_rate, config.warmup_ratio, total_steps
    )
    rng = random.Random(config.seed)
    lengths = [len(e.input_ids) for e in train_set]

    def plan() -> Iterator[list[int]]:
        for _ in range(math.ceil(config.epochs)):
            yield from length_grouped_batches(lengths, config.batch_size, rng)

    tokens = 0
    model.train()
    with tqdm(total=total_steps, desc="training", unit="step", disable=not progress) as bar:
        for indices in plan():
            if len(history) >= total_steps:
                break
            batch = collate([train_set[i] for i in indices], pad, device)
            with autocast(device):
                loss_sum, n = batch_loss(model, batch)
            loss = loss_sum / max(n, 1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            history.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(history[-10:]) / len(history[-10:]):.3f}")
    return tokens


def _save(
    model: Any,
    out_dir: Path,
    base: BaseModelInfo,
    train_data: Dataset,
    config: TrainConfig,
    metrics: dict[str, float],
    train_examples: Sequence[Example],
) -> ManifestDraft:
    """The PEFT files and, beside them, the draft manifest the registry completes."""
    model.save_pretrained(out_dir)
    device = next(model.parameters()).device
    draft = ManifestDraft(
        base=BaseRef(id=base.id, fingerprint=base.fingerprint),
        data=DataInfo(fingerprint=train_data.fingerprint, examples=len(train_data.examples)),
        metrics=metrics,
        hyperparameters={**config.hyperparameters(), "device": device.type},
        routing_examples=routing_sample(train_examples, config.routing_examples, config.seed),
    )
    (out_dir / MANIFEST_FILE).write_text(
        json.dumps(draft.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True)
        + "\n"
    )
    return draft


def _train(
    base: BaseModelInfo,
    train_data: Dataset,
    config: TrainConfig,
    out_dir: Path,
    eval_data: Dataset | None,
    general_data: Dataset | None,
    progress: bool,
    history: list[float],
) -> TrainResult:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    pad = pad_id(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly
    sets = _encode_sets(tokenizer, train_data, eval_data, general_data, config)

    def losses(when: str) -> dict[str, float]:
        return {
            f"eval_loss_{when}": mean_loss(model, sets.held_out, config.batch_size, pad),
            f"general_loss_{when}": mean_loss(model, sets.general, config.batch_size, pad),
        }

    metrics = losses("before")
    model = get_peft_model(model, peft_config(config))
    if config.method == "prefix":
        init_prefix_from_text(model, tokenizer, sets.train_examples[0].request)
    trainable = assert_frozen(model)
    digest_before = base_digest(model)

    train_started = time.perf_counter()
    tokens = _optimise(model, sets.train, config, pad, progress, history)
    train_seconds = time.perf_counter() - train_started

    assert_frozen(model)
    if base_digest(model) != digest_before:
        raise SwitchboardError(ErrorCode.INTEGRITY, "base weights changed during training")

    tail = history[-max(1, math.ceil(len(sets.train) / config.batch_size)) :]  # last epoch
    metrics["train_loss"] = sum(tail) / len(tail)
    metrics |= losses("after")
    metrics["train_tokens_per_second"] = tokens / train_seconds
    metrics["train_seconds"] = train_seconds
    metrics["trainable_parameters"] = float(trainable)
    metrics["train_examples"] = float(len(sets.train))  # rows trained on (split, fitting)
    metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}

    draft = _save(model, out_dir, base, train_data, config, metrics, sets.train_examples)
    seconds = time.perf_counter() - started
    log.info("trained %d steps in %.1fs; saved to %s", len(history), seconds, out_dir)
    return TrainResult(out_dir, draft, metrics, len(history), seconds, history, model)
