"""Batched LoRA layers: a batch whose rows use different adapters (or none) gives each row
exactly what PEFT gives that row alone with its adapter, on a real tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard_lora.serving.engines.hf.batched_lora import LoRASet, load_lora
from switchboard_lora.trainer.synthetic import random_adapter


@pytest.fixture(scope="module")
def adapters(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRAs on different module sets and ranks."""
    return [
        random_adapter(tiny_base_dir, tmp_path_factory.mktemp("a"), seed=1, rank=4),
        random_adapter(
            tiny_base_dir, tmp_path_factory.mktemp("b"), seed=2, rank=2, modules=("q_proj",)
        ),
    ]


def _peft_logits(base_dir: Path, adapter: Path | None, ids: object) -> object:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_one_segment_per_adapter_equals_peft_for_those_rows(
    tiny_base_dir: Path, adapters: list[Path]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    loras = LoRASet(model)
    weights = [load_lora(path, torch.float32) for path in adapters]
    for w in weights:
        loras.wrap(w)
    ids = torch.randint(0, 128, (5, 7), generator=torch.Generator().manual_seed(0))
    # rows 0-1: adapter a; row 2: the base; rows 3-4: adapter b
    loras.plan([(0, 2, weights[0]), (3, 5, weights[1])])
    with torch.no_grad():
        batched = model(input_ids=ids).logits
    expected = {
        (0, 2): _peft_logits(tiny_base_dir, adapters[0], ids[0:2]),
        (2, 3): _peft_logits(tiny_base_dir, None, ids[2:3]),
        (3, 5): _peft_logits(tiny_base_dir, adapters[1], ids[3:5]),
    }
    for (start, end), reference in expected.items():
        torch.testing.assert_close(batched[start:end], reference, rtol=1e-5, atol=1e-5)
    # The adapters change the output: the comparison above could fail.
    assert not torch.allclose(batched[0:2], _peft_logits(tiny_base_dir, None, ids[0:2]))

    loras.clear()  # no plan: every row is the plain base
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(plain, _peft_logits(tiny_base_dir, None, ids), rtol=1e-5, atol=1e-5)
