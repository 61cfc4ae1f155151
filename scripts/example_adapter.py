"""Write a fresh LoRA adapter for the default base (what `scripts/quickstart.sh` publishes).

python scripts/example_adapter.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from registry import BaseModels, Settings


def main(out: Path) -> None:
    settings = Settings()
    base = BaseModels(settings.home_dir / "bases").get(settings.base)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    get_peft_model(model, config).save_pretrained(out)
    print(f"wrote a rank-8 LoRA for {base.id} to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
