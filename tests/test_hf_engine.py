"""The transformers+PEFT engine on the real base (SmolLM2-135M-Instruct, fp32).

Reference outputs come from PEFT itself on a freshly loaded model, one request at a time;
the engine must give the same greedy tokens whether a request runs alone or in a batch
mixing other adapters and the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.hf_feed import ListFeed, generate
from switchboard_lora.registry import BaseModelInfo, SwitchboardError
from switchboard_lora.serving.engines.hf.engine import HFEngine
from switchboard_lora.serving.engines.interface import (
    AdapterSpec,
    Generation,
    GenerationRequest,
    SamplingParams,
)
from switchboard_lora.trainer.synthetic import random_adapter

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
        made[name] = AdapterSpec.local(f"{name}-v1-test", out, "lora")
    out = random_adapter(
        real_base.path, tmp_path_factory.mktemp("prefix"), "prefix", seed=3, virtual_tokens=4
    )
    made["p"] = AdapterSpec.local("p-v1-test", out, "prefix")
    return made


@pytest.fixture(scope="module")
def engine(real_base: BaseModelInfo) -> HFEngine:
    return HFEngine(real_base.path)


def answered(outcomes: list[Generation | Exception]) -> list[Generation]:
    """The generations of a batch the test expects every request of to succeed."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return outcomes  # type: ignore[return-value]


def one(engine: HFEngine, request: GenerationRequest) -> Generation:
    return answered(generate(engine, [request]))[0]


def reference(base_dir: Path, adapter: AdapterSpec | None, prompt: str, tokens: int) -> list[int]:
    """Greedy tokens from PEFT (or plain transformers) on a fresh model, batch of one."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter.checkout())
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
    mixed = answered(
        generate(engine, rows, on_token=lambda i, t: streamed.setdefault(i, []).append(t))
    )
    for index, (row, generation) in enumerate(zip(rows, mixed, strict=True)):
        expected = reference(real_base.path, row.adapter, row.prompt, 8)
        assert list(generation.token_ids) == expected, (row.adapter, row.prompt)
        assert streamed[index] == expected  # streaming hands out the same tokens, as made
        assert generation.prompt_tokens == len(engine.tokens.encode(row.prompt))
    # The adapters do change the answer: the comparison above can fail.
    assert mixed[0].token_ids != mixed[1].token_ids
    assert "Paris" in one(engine, GenerationRequest(prompts[0], None, params)).text


class OneAtATime(ListFeed):
    """Hands the engine one request per step: each joins a batch already running, with a
    cache of another length, other adapters and other prefixes."""

    def take(self, limit: int) -> list[tuple[int, GenerationRequest]]:
        return super().take(min(limit, 1))


def test_requests_joining_a_running_batch_match_peft_one_request_at_a_time(
    engine: HFEngine, adapters: dict[str, AdapterSpec], real_base: BaseModelInfo
) -> None:
    prompts = [engine.tokens.render_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    rows = [
        GenerationRequest(prompts[2], adapters["a"], SamplingParams(max_tokens=10)),
        GenerationRequest(prompts[0], None, SamplingParams(max_tokens=3)),  # ends early
        GenerationRequest(prompts[1], adapters["p"], SamplingParams(max_tokens=8)),
        GenerationRequest(prompts[0], adapters["b"], SamplingParams(max_tokens=8)),
        GenerationRequest(prompts[2], adapters["a"], SamplingParams(max_tokens=6)),
        GenerationRequest(prompts[1], None, SamplingParams(max_tokens=6)),
    ]
    steps: list[int] = []
    feed = OneAtATime(rows, on_token=lambda i, _: steps.append(i))
    engine.serve(feed)
    for row, generation in zip(rows, answered(feed.results), strict=True):  # type: ignore[arg-type]
        expected = reference(real_base.path, row.adapter, row.prompt, row.params.max_tokens)
        assert list(generation.token_ids) == expected, (row.adapter, row.prompt)
    # They did run together: the first request was still decoding when the last one joined.
    assert steps.index(len(rows) - 1) < len(steps) - 1 - steps[::-1].index(0)
    assert not any(layer.plan for layer in engine._lora_set.layers.values())  # the base again


def test_limits_stops_and_eviction(
    engine: HFEngine, adapters: dict[str, AdapterSpec], real_base: BaseModelInfo
) -> None:
    prompt = engine.tokens.render_chat([{"role": "user", "content": PROMPTS[0]}])
    short = one(engine, GenerationRequest(prompt, None, SamplingParams(max_tokens=2)))
    assert len(short.token_ids) == 2 and short.finish_reason == "length"
    full = one(engine, GenerationRequest(prompt, None, SamplingParams(max_tokens=40)))
    assert full.finish_reason == "stop" and "Paris" in full.text
    word = full.text.split()[2]
    cut = one(engine, GenerationRequest(prompt, None, SamplingParams(max_tokens=40, stop=(word,))))
    assert cut.finish_reason == "stop" and word not in cut.text and full.text.startswith(cut.text)
    with pytest.raises(SwitchboardError, match="exceeds the model's context"):
        one(
            engine, GenerationRequest(prompt, None, SamplingParams(max_tokens=engine.max_model_len))
        )
    with pytest.raises(SwitchboardError, match="temperature"):
        SamplingParams(temperature=5.0)

    small = HFEngine(real_base.path, max_adapters=1)
    params = SamplingParams(max_tokens=4)
    first = one(small, GenerationRequest(prompt, adapters["a"], params))
    one(small, GenerationRequest(prompt, adapters["b"], params))
    assert list(small._loras.items) == [adapters["b"].served_name]  # "a" was unloaded
    again = one(small, GenerationRequest(prompt, adapters["a"], params))
    assert again.token_ids == first.token_ids  # reloaded on demand, same answer


def test_sampling_settings_differ_per_row_and_a_seed_holds_whatever_the_batch(
    engine: HFEngine, adapters: dict[str, AdapterSpec], real_base: BaseModelInfo
) -> None:
    """Issue 15 item 1: seeds of 1 and None, temperature 1e-300 and a seed of 2**64 in one
    batch used to fail the whole batch (a TypeError sorting seeds; inf/nan probabilities)."""
    prompt = engine.tokens.render_chat([{"role": "user", "content": PROMPTS[2]}])
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=1)
    rows = [
        GenerationRequest(prompt, None, SamplingParams(max_tokens=12)),
        GenerationRequest(prompt, None, seeded),
        GenerationRequest(prompt, None, SamplingParams(max_tokens=12, temperature=1.0)),
        GenerationRequest(prompt, None, SamplingParams(max_tokens=12, temperature=1e-300)),
        GenerationRequest(prompt, adapters["a"], SamplingParams(max_tokens=12, seed=2**64 - 1)),
        GenerationRequest(
            prompt, None, SamplingParams(max_tokens=12, temperature=0.7, top_p=0.5, seed=2**64 - 1)
        ),
    ]
    batch = answered(generate(engine, rows))
    greedy = reference(real_base.path, None, prompt, 12)
    assert list(batch[0].token_ids) == greedy
    assert list(batch[3].token_ids) == greedy  # a vanishing temperature is greedy
    assert list(batch[4].token_ids) == reference(real_base.path, adapters["a"], prompt, 12)
    # The seeded row gives the same tokens alone as in the batch; another seed differs.
    assert one(engine, rows[1]).token_ids == batch[1].token_ids
    other_seed = SamplingParams(max_tokens=12, temperature=1.0, seed=2)
    assert one(engine, GenerationRequest(prompt, None, other_seed)).token_ids != batch[1].token_ids
    assert batch[1].token_ids != tuple(greedy)  # it did sample
    with pytest.raises(SwitchboardError, match="seed"):
        SamplingParams(seed=2**64)


def test_a_request_whose_adapter_fails_fails_alone(
    engine: HFEngine, adapters: dict[str, AdapterSpec], real_base: BaseModelInfo, tmp_path: Path
) -> None:
    prompt = engine.tokens.render_chat([{"role": "user", "content": PROMPTS[0]}])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8}')
    (broken / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    params = SamplingParams(max_tokens=6)
    rows = [
        GenerationRequest(prompt, adapters["a"], params),
        GenerationRequest(prompt, AdapterSpec.local("broken-v1-test", broken, "lora"), params),
        GenerationRequest(prompt, None, params),
    ]
    outcomes = generate(engine, rows)
    assert isinstance(outcomes[1], Exception)
    assert [list(g.token_ids) for g in answered([outcomes[0], outcomes[2]])] == [
        reference(real_base.path, adapters["a"], prompt, 6),
        reference(real_base.path, None, prompt, 6),
    ]


def test_rows_whose_clients_left_stop_at_the_next_step(engine: HFEngine) -> None:
    prompt = engine.tokens.render_chat([{"role": "user", "content": PROMPTS[2]}])
    made: list[int] = []
    # max_tokens=64 with a minimum of tokens: the haiku takes more than 10
    outcomes = generate(
        engine,
        [GenerationRequest(prompt, None, SamplingParams(max_tokens=64))],
        on_token=lambda _, token: made.append(token),
        cancelled=lambda _: len(made) >= 3,  # the client leaves after three tokens
    )
    assert isinstance(outcomes[0], Generation)
    assert 3 <= len(made) <= 4, made  # one step at most after it left, not 64


def test_logprobs_are_the_models_own(engine: HFEngine, real_base: BaseModelInfo) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    prompt = engine.tokens.render_chat([{"role": "user", "content": PROMPTS[0]}])
    generation = one(
        engine, GenerationRequest(prompt, None, SamplingParams(max_tokens=3, logprobs=5))
    )
    assert generation.logprobs is not None and len(generation.logprobs) == len(generation.token_ids)
    model: Any = AutoModelForCausalLM.from_pretrained(real_base.path)
    ids = engine.tokens.encode(prompt)
    with torch.inference_mode():
        first = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    step = generation.logprobs[0]
    assert step.token_id == generation.token_ids[0]
    assert step.logprob == pytest.approx(float(first[step.token_id]), abs=1e-4)
    expected_top = first.topk(5)
    assert [t for t, _ in step.top] == expected_top.indices.tolist()
    assert [lp for _, lp in step.top] == pytest.approx(expected_top.values.tolist(), abs=1e-4)


def test_an_adapter_is_verified_again_whenever_it_is_reloaded(
    adapters: dict[str, AdapterSpec], real_base: BaseModelInfo
) -> None:
    """Issue 15 item 5: after an eviction the engine reloaded a remembered path unchecked."""
    calls: dict[str, int] = {"a": 0, "b": 0}

    def counted(name: str) -> AdapterSpec:
        spec = adapters[name]

        def checkout() -> Path:
            calls[name] += 1
            return spec.checkout()

        return AdapterSpec(spec.served_name, checkout, "lora")

    small = HFEngine(real_base.path, max_adapters=1)
    a, b = counted("a"), counted("b")
    prompt = small.tokens.render_chat([{"role": "user", "content": PROMPTS[0]}])
    params = SamplingParams(max_tokens=2)
    for spec in (a, a, b, a):
        one(small, GenerationRequest(prompt, spec, params))
    assert calls == {"a": 2, "b": 1}  # loaded, kept, evicted by b, reloaded: checked again
