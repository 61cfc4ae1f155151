"""PEFT training on a frozen base: LoRA or prefix tuning, one domain at a time.

The loop is plain PyTorch: length-grouped batches (little padding), the loss taken only on
answer tokens, evaluation before and after on held-out domain data and on general text.
The base is frozen and the code checks it: no base parameter may require grad, and a digest
of the base weights is the same before and after training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from registry.bases import BaseModelInfo
from registry.errors import ErrorCode, SwitchboardError
from registry.manifest import MANIFEST_FILE, BaseRef, DataInfo, ManifestDraft
from trainer.data import Dataset, Example

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# The projections vLLM's LoRA path serves for Llama-style models.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DEFAULT_LR = {"lora": 3e-4, "prefix": 3e-3}
IGNORE = -100


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


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with (masked out, so any id would do; the base's own if any)."""
    pad: int = tokenizer.pad_token_id
    return pad if pad is not None else int(tokenizer.eos_token_id)


def encode(tokenizer: Any, example: Example, max_length: int) -> Encoded | None:
    """Token ids and labels; the prompt part is masked. None if no answer token fits."""
    if example.is_chat:
        messages = [{"role": r, "content": c} for r, c in example.messages]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"line {example.line}: the chat template renders the prompt differently "
                "inside the full conversation; cannot mask it",
            )
        answer = full[len(prompt) :]
    else:
        prompt, answer = example.prompt, example.completion + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    if all(t == IGNORE for t in labels[1:]):  # the first label is never predicted
        return None
    return Encoded(ids, labels)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffle, sort by length inside chunks of 64 batches, then shuffle the batches.

    Neighbours in a batch have similar lengths (little padding) and the order still varies
    from epoch to epoch: the trick of HF's `group_by_length`, applied here by default.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = 64 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[Encoded], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def batch_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens, and how many there were."""
    sums, counts = row_losses(model, batch)
    return sums.sum(), int(counts.sum())


def row_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed cross-entropy over its answer tokens, and how many there were.

    The LM head (vocabulary x hidden: a fifth of SmolLM2's compute, and a [batch, length,
    vocabulary] logits tensor) runs only on the positions that carry a label; the loss is
    the same as from full logits.
    """
    import torch
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    split = _decoder_and_head(model)
    if split is None:  # prompt learning: PEFT injects the prefix in its own forward
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked = logits[:, :-1][keep]
    else:
        decoder, head = split
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        picked = head(hidden[:, :-1][keep])
    losses = F.cross_entropy(picked.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(len(targets), dtype=losses.dtype, device=losses.device)
    return sums.index_add(0, rows, losses), keep.sum(dim=1)


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The backbone and LM head of a causal LM (LoRA layers live inside them), if separable."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None
        model = model.get_base_model()
    if getattr(model.config, "final_logit_softcapping", None):  # head is more than a matmul
        return None
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    return None if decoder is None or head is None else (decoder, head)


def mean_loss(model: Any, encoded: Sequence[Encoded], batch_size: int, pad_id: int) -> float:
    """Token-weighted mean loss, no gradients; NaN for an empty set."""
    if not encoded:
        return math.nan
    return token_mean(loss_per_row(model, encoded, batch_size, pad_id))


def token_mean(rows: Sequence[tuple[float, int]]) -> float:
    """The token-weighted mean of (summed loss, tokens) rows."""
    return sum(total for total, _ in rows) / max(sum(n for _, n in rows), 1)


def loss_per_row(
    model: Any, encoded: Sequence[Encoded], batch_size: int, pad_id: int
) -> list[tuple[float, int]]:
    """(summed loss, answer tokens) of each example, in order; no gradients."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(device):
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            sums, counts = row_losses(model, collate([encoded[i] for i in chosen], pad_id, device))
            for i, total, n in zip(chosen, sums.tolist(), counts.tolist(), strict=True):
                out[i] = (total, n)
    model.train(was_training)
    return out


def _autocast(device: Any) -> Any:
    import contextlib

    import torch

    if device.type == "cuda":  # bf16 compute on GPU; adapter weights stay fp32
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def base_digest(model: Any) -> str:
    """sha256 over the base model's parameters (adapter parameters excluded)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if _is_adapter_param(name):
            continue
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _is_adapter_param(name: str) -> bool:
    return "lora_" in name or "prompt_encoder" in name


def assert_frozen(model: Any) -> int:
    """Raise unless exactly the adapter parameters require grad; return their count."""
    thawed = [
        n for n, p in model.named_parameters() if p.requires_grad and not _is_adapter_param(n)
    ]
    if thawed:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT, f"base parameters would be trained: {thawed[:5]}"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "the adapter has no trainable parameters")
    return trainable


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


def _peft_config(config: TrainConfig) -> Any:
    from peft import LoraConfig, PrefixTuningConfig, TaskType

    if config.method == "lora":
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
        )
    return PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens
    )


def init_prefix_from_text(model: Any, tokenizer: Any, text: str) -> None:
    """Start a prefix as the key/value cache of real text (Li & Liang, 2021).

    PEFT's default is N(0, 1) noise for every key and value, which wrecks the model's output
    before the first step. The base's own cache for a few real tokens is exactly what the model
    would see if that text preceded the input: training starts from near the base's loss.
    """
    import torch

    config = model.peft_config[model.active_adapter]
    n = config.num_virtual_tokens
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    ids = (ids * (n // len(ids) + 1))[:n]
    device = next(model.parameters()).device
    with torch.no_grad():
        cache = model.get_base_model()(
            input_ids=torch.tensor([ids], device=device), use_cache=True
        ).past_key_values
        blocks = []
        for layer in cache.layers:  # PEFT's layout: [token, (layer, key|value, head, dim)]
            for kv in (layer.keys, layer.values):
                blocks.append(kv[0].permute(1, 0, 2).reshape(n, -1))
        weight = torch.cat(blocks, dim=-1)
        model.prompt_encoder[model.active_adapter].embedding.weight.copy_(weight)


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
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    pad = pad_id(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly

    train_examples, held_out = split(train_data, config)
    if eval_data is not None:  # an explicit eval file replaces the split
        train_examples, held_out = list(train_data.examples), list(eval_data.examples)
        held_out = held_out[: config.max_eval_examples]

    def encode_all(examples: Sequence[Example]) -> list[Encoded]:
        encoded = [encode(tokenizer, e, config.max_length) for e in examples]
        return [e for e in encoded if e is not None]

    train_set, eval_set = encode_all(train_examples), encode_all(held_out)
    general_set = (
        encode_all(general_data.examples[: config.max_general_examples]) if general_data else []
    )
    dropped = len(train_examples) - len(train_set)
    if dropped:
        log.warning(
            "%d training rows left no answer token within %d tokens", dropped, config.max_length
        )
    if not train_set:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "no training example fits max_length")

    metrics: dict[str, float] = {}
    metrics["eval_loss_before"] = mean_loss(model, eval_set, config.batch_size, pad)
    metrics["general_loss_before"] = mean_loss(model, general_set, config.batch_size, pad)

    model = get_peft_model(model, _peft_config(config))
    if config.method == "prefix":
        init_prefix_from_text(model, tokenizer, train_examples[0].request)
    trainable = assert_frozen(model)
    digest_before = base_digest(model)

    rng = random.Random(config.seed)
    lengths = [len(e.input_ids) for e in train_set]
    epochs = math.ceil(config.epochs)
    per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = max(1, round(per_epoch * config.epochs))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimizer, schedule = adamw_with_warmup(
        [p for p in model.parameters() if p.requires_grad],
        config.learning_rate,
        config.warmup_ratio,
        total_steps,
    )

    def plan() -> Iterator[list[int]]:
        for _ in range(epochs):
            yield from length_grouped_batches(lengths, config.batch_size, rng)

    tokens = 0
    model.train()
    train_started = time.perf_counter()
    bar = tqdm(total=total_steps, desc="training", unit="step", disable=not progress)
    with bar:
        for indices in plan():
            if len(history) >= total_steps:
                break
            batch = collate([train_set[i] for i in indices], pad, device)
            with _autocast(device):
                loss_sum, n = batch_loss(model, batch)
            loss = loss_sum / max(n, 1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
            )
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            history.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(history[-10:]) / len(history[-10:]):.3f}")
    train_seconds = time.perf_counter() - train_started

    assert_frozen(model)
    if base_digest(model) != digest_before:
        raise SwitchboardError(ErrorCode.INTEGRITY, "base weights changed during training")

    tail = history[-max(1, per_epoch) :]
    metrics["train_loss"] = sum(tail) / len(tail)
    metrics["eval_loss_after"] = mean_loss(model, eval_set, config.batch_size, pad)
    metrics["general_loss_after"] = mean_loss(model, general_set, config.batch_size, pad)
    metrics["train_tokens_per_second"] = tokens / train_seconds
    metrics["train_seconds"] = train_seconds
    metrics["trainable_parameters"] = float(trainable)
    metrics["train_examples"] = float(len(train_set))  # rows trained on (split, fitting)
    metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}

    model.save_pretrained(out_dir)
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
    seconds = time.perf_counter() - started
    log.info("trained %d steps in %.1fs; saved to %s", len(history), seconds, out_dir)
    return TrainResult(out_dir, draft, metrics, len(history), seconds, history, model)
