"""Untrained adapters with random weights: real PEFT directories for tests and benchmarks,
made in a second instead of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from switchboard_lora.registry.bases import PROJECTIONS


def random_adapter(
    base_dir: Path,
    out: Path,
    method: str = "lora",
    seed: int = 0,
    rank: int = 4,
    *,
    modules: tuple[str, ...] = PROJECTIONS,
    alpha: int | None = None,
    scale: float = 1.0,
    virtual_tokens: int = 3,
) -> Path:
    """A PEFT adapter for the model in `base_dir`, saved to `out`. LoRA: A and B random
    (PEFT's default B = 0 would change nothing), B times `scale` (small scales keep a real
    base's answers fluent), alpha 2 x rank unless given. Prefix: `virtual_tokens` tokens."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config: Any
    if method == "lora":
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank if alpha is None else alpha,
            target_modules=list(modules),
            init_lora_weights=False,
        )
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens)
    peft_model = get_peft_model(model, config)
    if scale != 1.0:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(scale)
    peft_model.save_pretrained(out)
    return out


def word_tokenizer(vocab_size: int, out: Path, eos: int = 0) -> Path:
    """A word-level tokenizer of `vocab_size` words ("t17" is id 17), saved to `out`, for a
    base of random weights: prompts are exact token ids, any length, no file to download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, f"t{eos}"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = f"t{eos}"
    PreTrainedTokenizerFast(
        tokenizer_object=words, eos_token=special, pad_token=special, unk_token=special
    ).save_pretrained(out)
    return out
