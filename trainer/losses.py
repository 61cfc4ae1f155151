"""Losses over answer tokens only: per row, per batch, and means over a whole set."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from switchboard_lora.trainer.encoding import IGNORE, Encoded, collate

if TYPE_CHECKING:
    import torch


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
    with torch.no_grad(), autocast(device):
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            sums, counts = row_losses(model, collate([encoded[i] for i in chosen], pad_id, device))
            for i, total, n in zip(chosen, sums.tolist(), counts.tolist(), strict=True):
                out[i] = (total, n)
    model.train(was_training)
    return out


def autocast(device: Any) -> Any:
    """bf16 compute on a GPU (adapter weights stay fp32); nothing on a CPU."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
