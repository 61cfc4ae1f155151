"""The transformers+PEFT engine on the real base (SmolLM2-135M-Instruct, fp32).

Reference outputs come from PEFT itself on a freshly loaded model, one request at a time;
the engine must give the same greedy tokens whether a request runs alone or in a batch
mixing other adapters and the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry import BaseModelInfo, SwitchboardError
from serving.engine import AdapterSpec, GenerationRequest, SamplingParams
from serving.hf_engine import HFEngine
from trainer.synthetic import random_adapter

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def adapters(real_base: BaseModelInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    made = {}
    for name, seed in (("a", 1), ("b", 2)):
        out = random_adapter(
            real_base.path,
            tmp_path_factory.mktemp(f"lora-{name}"),
            seed=seed,
            modules=("q_proj", "v_proj"),
            scale=0.25,  # small enough to keep the answers fluent
        )
        made[name] = AdapterSpec(f"{name}-v1-test", out, "lora")
    out = random_adapter(
        real_base.path, tmp_path_factory.mktemp("prefix"), "prefix", seed=3, virtual_tokens=4
    )
    made["p"] = AdapterSpec("p-v1-test", out, "prefix")
    return made


@pytest.fixture(scope="module")
def engine(real_base: BaseModelInfo) -> HFEngine:
    return HFEngine(real_base.path)


def reference(base_dir: Path, adapter: AdapterSpec | None, prompt: str, tokens: int) -> list[int]:
    """Greedy tokens from PEFT (or plain transformers) on a fresh model, batch of one."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter.path)
    encoded = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=tokens, do_sample=False)
    new: list[int] = out[0, encoded["input_ids"].shape[1] :].tolist()
    return new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new


def test_mixed_batches_match_peft_one_request_at_a_time(
    engine: HFEngine, adapters: dict[str, AdapterSpec], real_base: BaseModelInfo
) -> None:
    prompts = [engine.tokens.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    params = SamplingParams(max_tokens=8)
    rows = [
        GenerationRequest(prompts[0], None, params),
        GenerationRequest(prompts[0], adapters["a"], params),
        GenerationRequest(prompts[1], adapters["b"], params),
        GenerationRequest(prompts[2], adapters["p"], params),
        GenerationRequest(prompts[1], adapters["a"], params),
        GenerationRequest(prompts[2], None, params),
    ]
    streamed: dict[int, list[int]] = {}
    mixed = engine.generate(rows, on_token=lambda i, t: streamed.setdefault(i, []).append(t))
    for index, (row, generation) in enumerate(zip(rows, mixed, strict=True)):
        expected = reference(real_base.path, row.adapter, row.prompt, 8)
        assert list(generation.token_ids) == expected, (row.adapter, row.prompt)
        assert streamed[index] == expected  # streaming hands out the same tokens, as made
        assert generation.prompt_tokens == len(engine.tokens.encode(row.prompt))
    # The adapters do change the answer: the comparison above can fail.
    assert mixed[0].token_ids != mixed[1].token_ids
    assert "Paris" in engine.generate([GenerationRequest(prompts[0], None, params)])[0].text


def test_limits_stops_and_eviction(
    engine: HFEngine, adapters: dict[str, AdapterSpec], real_base: BaseModelInfo
) -> None:
    prompt = engine.tokens.render_chat([{"role": "user", "content": PROMPTS[0]}])
    short = engine.generate([GenerationRequest(prompt, None, SamplingParams(max_tokens=2))])[0]
    assert len(short.token_ids) == 2 and short.finish_reason == "length"
    full = engine.generate([GenerationRequest(prompt, None, SamplingParams(max_tokens=40))])[0]
    assert full.finish_reason == "stop" and "Paris" in full.text
    word = full.text.split()[2]
    cut = engine.generate(
        [GenerationRequest(prompt, None, SamplingParams(max_tokens=40, stop=(word,)))]
    )[0]
    assert cut.finish_reason == "stop" and word not in cut.text and full.text.startswith(cut.text)
    with pytest.raises(SwitchboardError, match="exceeds the model's context"):
        engine.generate(
            [GenerationRequest(prompt, None, SamplingParams(max_tokens=engine.max_model_len))]
        )
    with pytest.raises(SwitchboardError, match="temperature"):
        SamplingParams(temperature=5.0)

    small = HFEngine(real_base.path, max_adapters=1)
    params = SamplingParams(max_tokens=4)
    first = small.generate([GenerationRequest(prompt, adapters["a"], params)])[0]
    small.generate([GenerationRequest(prompt, adapters["b"], params)])
    assert list(small._loras.items) == [adapters["b"].served_name]  # "a" was unloaded
    again = small.generate([GenerationRequest(prompt, adapters["a"], params)])[0]
    assert again.token_ids == first.token_ids  # reloaded on demand, same answer
