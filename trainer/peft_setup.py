"""The adapter put on the frozen base: PEFT's config per method, the prefix's initialisation,
and the checks that only the adapter trains and the base does not change."""

from __future__ import annotations

import hashlib
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.trainer.config import TrainConfig


def peft_config(config: TrainConfig) -> Any:
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
