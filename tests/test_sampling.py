"""Issue 33 items 2 and 3 at the engine: vLLM's sampling settings and structured output, each
row of a batch by its own, on the real base (SmolLM2-135M-Instruct, fp32).

References are independent of the engine: transformers' own `generate` (repetition penalty),
the model's forward pass (prompt log probabilities), a JSON-schema validator and `re`
(guided rows), and vLLM (the same settings, greedy: the same tokens on both engines)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from support.hf_feed import generate
from switchboard_lora.registry import BaseModelInfo, SwitchboardError
from switchboard_lora.serving.engines.grammar import Guide
from switchboard_lora.serving.engines.hf.engine import HFEngine
from switchboard_lora.serving.engines.interface import (
    Generation,
    GenerationRequest,
    SamplingParams,
)

pytestmark = pytest.mark.slow

CAT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(real_base: BaseModelInfo) -> HFEngine:
    return HFEngine(real_base.path)


@pytest.fixture(scope="module")
def chat(engine: HFEngine) -> str:
    question = "Describe a cat as a JSON object with its name and age."
    return engine.tokens.render_chat([{"role": "user", "content": question}])


def run(engine: HFEngine, requests: list[GenerationRequest]) -> list[Generation]:
    """One batch: every request decodes together with the others."""
    outcomes = generate(engine, requests)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return outcomes  # type: ignore[return-value]


def ask(prompt: str, **settings: Any) -> GenerationRequest:
    return GenerationRequest(prompt, None, SamplingParams(**settings))


def test_each_setting_acts_on_its_own_row_in_one_batch(engine: HFEngine, chat: str) -> None:
    greedy = run(engine, [ask(chat, max_tokens=12)])[0].token_ids
    third = greedy[2]
    favoured = engine.tokens.encode(" banana")[0]
    allowed = tuple(engine.tokens.encode(" yes no maybe"))
    batch = run(
        engine,
        [
            ask(chat, max_tokens=12),  # untouched by its neighbours' settings
            ask(chat, max_tokens=12, stop_token_ids=(third,)),
            ask(chat, max_tokens=6, logit_bias=((favoured, 100.0),)),
            ask(chat, max_tokens=8, allowed_token_ids=allowed, temperature=1.0, seed=5),
            ask(chat, max_tokens=12, temperature=1.5, top_k=1, seed=7),  # top_k 1: the argmax
            ask(chat, max_tokens=12, temperature=1.5, min_p=1.0, seed=8),  # only the most likely
            ask("Say OK.", max_tokens=30, min_tokens=25),
            ask("Say OK.", max_tokens=30),
        ],
    )
    assert batch[0].token_ids == greedy
    assert batch[1].token_ids == greedy[:2] and batch[1].finish_reason == "stop"
    assert set(batch[2].token_ids) == {favoured}
    assert batch[3].token_ids and set(batch[3].token_ids) <= set(allowed)
    assert batch[4].token_ids == greedy and batch[5].token_ids == greedy
    assert len(batch[7].token_ids) < 25, "the prompt must end early without min_tokens"
    assert len(batch[6].token_ids) >= 25


def test_repetition_penalty_is_transformers_own(
    engine: HFEngine, real_base: BaseModelInfo, chat: str
) -> None:
    """vLLM and transformers define it alike (on prompt and answer tokens): greedy tokens
    equal `generate`'s with its own logits processor, batched beside an unpenalized row."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(real_base.path, dtype=torch.float32).eval()
    ids = torch.tensor([engine.tokens.encode(chat)])
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=16, do_sample=False, repetition_penalty=1.5, pad_token_id=0
        )
    expected = out[0, ids.shape[1] :].tolist()
    eos = engine.tokens.eos_id
    expected = expected[: expected.index(eos)] if eos in expected else expected
    penalized, plain = run(
        engine, [ask(chat, max_tokens=16, repetition_penalty=1.5), ask(chat, max_tokens=16)]
    )
    assert list(penalized.token_ids) == expected
    assert penalized.token_ids != plain.token_ids


def test_presence_and_frequency_penalties_spread_the_answer(engine: HFEngine) -> None:
    prompt = "List the word cat again and again: cat cat cat cat"
    plain, penalized = run(
        engine,
        [
            ask(prompt, max_tokens=24, ignore_eos=True),
            ask(
                prompt, max_tokens=24, ignore_eos=True, frequency_penalty=2.0, presence_penalty=2.0
            ),
        ],
    )
    assert len(set(penalized.token_ids)) > len(set(plain.token_ids))


def test_seeded_rows_with_every_setting_hold_whatever_the_batch(
    engine: HFEngine, chat: str
) -> None:
    settings = dict(
        max_tokens=10, temperature=0.9, top_k=20, top_p=0.9, min_p=0.05, seed=11,
        repetition_penalty=1.2, frequency_penalty=0.3, logit_bias=((28, 2.0),),
    )  # fmt: skip
    alone = run(engine, [ask(chat, **settings)])[0]
    crowd = [
        ask(chat, max_tokens=4),
        ask(chat, max_tokens=14, temperature=1.0),
        ask(chat, **settings),
    ]
    assert run(engine, crowd)[2].token_ids == alone.token_ids
    other = run(engine, [ask(chat, **{**settings, "seed": 12})])[0]
    assert other.token_ids != alone.token_ids


def test_prompt_logprobs_are_the_models_own(engine: HFEngine, real_base: BaseModelInfo) -> None:
    """The prompt's log probabilities (first: none), from prefills of several rows of
    different lengths, equal the model's forward pass on each prompt alone (1e-4 in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    prompts = ["The capital of France is Paris.", "One, two, three, four, five, six, seven."]
    answers = run(
        engine,
        [ask(p, max_tokens=0, prompt_logprobs=3) for p in prompts]
        + [ask(prompts[0], max_tokens=3)],
    )
    model = AutoModelForCausalLM.from_pretrained(real_base.path, dtype=torch.float32).eval()
    for prompt, answer in zip(prompts, answers, strict=False):
        ids = engine.tokens.encode(prompt)
        assert answer.token_ids == () and answer.finish_reason == "length"
        assert answer.prompt_ids == tuple(ids)
        with torch.inference_mode():
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        steps = answer.prompt_logprobs
        assert steps is not None and steps[0] is None and len(steps) == len(ids)
        for place, step in enumerate(steps[1:], start=1):
            assert step is not None and step.token_id == ids[place]
            expected = logp[place - 1, ids[place]].item()
            assert step.logprob == pytest.approx(expected, abs=1e-4)
            assert step.rank == int((logp[place - 1] > logp[place - 1, ids[place]]).sum()) + 1
            assert [t for t, _ in step.top] == logp[place - 1].topk(3).indices.tolist()
    assert answers[2].prompt_logprobs is None and len(answers[2].token_ids) == 3


def test_guided_rows_match_their_grammar_beside_free_rows(engine: HFEngine, chat: str) -> None:
    """Structured output mixed with free text in one batch: each answer parses and validates."""
    guides = [
        Guide("json", json.dumps(CAT)),
        Guide("json", '{"type":"object"}'),
        Guide("regex", r"[0-9]{3}-[0-9]{4}"),
        Guide("choice", json.dumps(["Python", "Rust"])),
        Guide("grammar", 'root ::= "yes" | "no"'),
    ]
    free = ask(chat, max_tokens=12)
    requests = [free] + [ask(chat, max_tokens=60, guide=g) for g in guides]
    requests.append(ask(chat, max_tokens=60, guide=guides[0], temperature=1.0, seed=3))
    answers = run(engine, requests)
    assert answers[0].token_ids == run(engine, [free])[0].token_ids
    cat, anything, phone, language, yes_no, sampled = answers[1:]
    jsonschema.validate(json.loads(cat.text), CAT)
    assert isinstance(json.loads(anything.text), dict)
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", phone.text)
    assert language.text in ("Python", "Rust")
    assert yes_no.text in ("yes", "no")
    jsonschema.validate(json.loads(sampled.text), CAT)
    assert all(a.finish_reason == "stop" for a in answers[1:])


def test_a_guide_the_library_cannot_compile_is_refused(engine: HFEngine) -> None:
    with pytest.raises(SwitchboardError, match="does not compile"):
        engine.tokens.grammars.compile(Guide("regex", "(["))
    with pytest.raises(SwitchboardError, match="does not compile"):
        engine.tokens.grammars.compile(Guide("json", '{"type": "nonsense"}'))


@pytest.mark.parametrize(
    "wrong",
    [
        dict(top_k=-2),
        dict(min_p=1.5),
        dict(repetition_penalty=0.0),
        dict(presence_penalty=2.5),
        dict(min_tokens=9, max_tokens=8),
        dict(logit_bias=((1, 101.0),)),
        dict(allowed_token_ids=()),
    ],
)
def test_settings_out_of_range_are_refused(wrong: dict[str, Any]) -> None:
    with pytest.raises(SwitchboardError):
        SamplingParams(**wrong)


@pytest.mark.vllm
def test_both_engines_give_the_same_tokens(
    engine: HFEngine, chat: str, real_base: BaseModelInfo
) -> None:
    """Greedy rows under every deterministic setting and guide: vLLM's tokens are ours."""
    import asyncio

    from switchboard_lora.serving.engines.vllm_engine import VLLMEngine

    settings: list[dict[str, Any]] = [
        dict(max_tokens=12),
        dict(max_tokens=12, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5),
        dict(max_tokens=6, logit_bias=((28, 100.0),)),
        dict(max_tokens=6, allowed_token_ids=(28, 29, 30)),
        dict(max_tokens=12, stop_token_ids=(29,)),
        dict(max_tokens=40, guide=Guide("json", json.dumps(CAT))),
        dict(max_tokens=10, guide=Guide("choice", json.dumps(["Python", "Rust"]))),
        dict(max_tokens=12, guide=Guide("regex", r"[a-z ]+")),
    ]
    requests = [ask(chat, **s) for s in settings]
    ours = run(engine, requests)
    vllm = VLLMEngine(real_base.path)

    async def theirs() -> list[Generation]:
        await vllm.start()
        try:
            return list(await asyncio.gather(*(vllm.submit(r) for r in requests)))
        finally:
            await vllm.stop()

    for mine, other in zip(ours, asyncio.run(theirs()), strict=True):
        assert (mine.text, mine.token_ids, mine.finish_reason) == (
            other.text,
            other.token_ids,
            other.finish_reason,
        )
