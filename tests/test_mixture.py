"""Mixtures: one LoRA whose weight delta is exactly the weighted sum of its components'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from switchboard_lora.registry import BaseModelInfo, Registry, SwitchboardError
from switchboard_lora.registry.errors import ErrorCode
from switchboard_lora.serving.mixture import build_mixture
from switchboard_lora.trainer.synthetic import random_adapter


def _deltas(directory: Path) -> dict[str, np.ndarray]:
    """Per module, scale · B · A, computed from the files alone."""
    from safetensors.numpy import load_file

    config = json.loads((directory / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    return {
        key.removesuffix(".lora_A.weight"): scale
        * tensors[key.replace("lora_A", "lora_B")].astype(np.float64)
        @ tensors[key].astype(np.float64)
        for key in tensors
        if key.endswith(".lora_A.weight")
    }


@pytest.fixture
def partial_lora_dir(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rank 2 on the attention projections only (a module set unlike the others)."""
    return random_adapter(
        tiny_base_dir,
        tmp_path_factory.mktemp("partial"),
        seed=5,
        rank=2,
        alpha=3,
        modules=("q_proj", "v_proj"),
    )


def test_mixture_delta_is_the_weighted_sum_and_is_cached(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    lora_dir_2: Path,
    partial_lora_dir: Path,
    tiny_base_dir: Path,
) -> None:
    registry.publish(lora_dir, "legal", tiny_base)
    registry.publish(lora_dir_2, "medical", tiny_base)
    registry.publish(partial_lora_dir, "attn", tiny_base)
    parts = [("legal", 0.6), ("medical:1", 0.3), ("attn", 0.1)]
    mix = build_mixture(registry, parts, tiny_base)
    assert mix.built and mix.version.method == "lora"
    assert mix.version.rank == 4 + 4 + 2

    manifest = registry.manifest(mix.version.ref)
    assert [(c.ref, c.weight) for c in manifest.components] == [
        ("legal:1", 0.6),
        ("medical:1", 0.3),
        ("attn:1", 0.1),
    ]
    _, mixed_dir = registry.checkout(mix.version.ref)
    mixed = _deltas(mixed_dir)
    expected: dict[str, np.ndarray] = {}
    for (_, weight), source in zip(parts, (lora_dir, lora_dir_2, partial_lora_dir), strict=True):
        for module, delta in _deltas(source).items():
            expected[module] = expected.get(module, 0) + weight * delta
    assert set(mixed) == set(expected)
    for module, delta in expected.items():
        np.testing.assert_allclose(mixed[module], delta, rtol=1e-5, atol=1e-7, err_msg=module)

    # PEFT loads the mix as an ordinary adapter, and its merged weights are base + the sum.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    base_weights = {k: v.detach().double().numpy() for k, v in base_model.state_dict().items()}
    merged = PeftModel.from_pretrained(base_model, mixed_dir).merge_and_unload().state_dict()
    for module, delta in expected.items():
        key = f"{module.removeprefix('base_model.model.')}.weight"
        np.testing.assert_allclose(
            merged[key].detach().double().numpy(), base_weights[key] + delta, atol=1e-5
        )

    # The same mix (weights equal to 4 decimals) is a lookup; other weights another mix.
    again = build_mixture(
        registry, [("attn:1", 0.1), ("legal:1", 0.60001), ("medical", 0.3)], tiny_base
    )
    assert not again.built and again.version.served_name == mix.version.served_name
    other = build_mixture(registry, [("legal", 0.5), ("medical", 0.5)], tiny_base)
    assert other.built and other.version.name != mix.version.name


def test_mixture_refuses_what_cannot_be_one_lora(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    prefix_dir: Path,
    other_base_dir: Path,
    foreign_lora_dir: Path,
    tmp_path: Path,
) -> None:
    registry.publish(lora_dir, "legal", tiny_base)
    registry.publish(prefix_dir, "style", tiny_base)
    cases = [
        ([], ErrorCode.INVALID_INPUT),
        ([("legal", 0.0)], ErrorCode.INVALID_INPUT),
        ([("legal", float("nan"))], ErrorCode.INVALID_INPUT),
        ([("legal", 0.5), ("legal:1", 0.5)], ErrorCode.INVALID_INPUT),
        ([("legal", 0.5), ("style", 0.5)], ErrorCode.INVALID_ADAPTER),
        ([("legal", 0.5), ("nobody", 0.5)], ErrorCode.NOT_FOUND),
    ]
    for parts, code in cases:
        with pytest.raises(SwitchboardError) as refused:
            build_mixture(registry, parts, tiny_base)
        assert refused.value.code == code, parts
    from switchboard_lora.registry import BaseModels

    other = BaseModels(tmp_path / "bases").get(str(other_base_dir))
    registry.publish(foreign_lora_dir, "foreign", other)
    with pytest.raises(SwitchboardError) as refused:
        build_mixture(registry, [("legal", 0.5), ("foreign", 0.5)], tiny_base)
    assert refused.value.code == ErrorCode.INCOMPATIBLE_BASE
    assert [a.name for a in registry.list_adapters()] == ["foreign", "legal", "style"]
