"""Issue 33 item 5: the clients users already run, unchanged, against a real `switchboard
serve` (the transformers engine): the `openai` client, LangChain's `ChatOpenAI` and `OpenAI`,
and lm-evaluation-harness's `local-completions` (token-id prompts, its default) running a
`generate_until` and a log-likelihood task shipped in tests/data, for the base and an adapter.
lm-eval's log-likelihoods for the base equal the transformers engine's own (1e-6)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import yaml
from serving_world import World

from support.hf_feed import generate
from support.processes import ServerProcess, switchboard_server
from switchboard_lora.serving.engines.hf.engine import HFEngine
from switchboard_lora.serving.engines.interface import GenerationRequest, SamplingParams

pytestmark = pytest.mark.slow

FACTS = Path(__file__).parent / "data" / "compat_facts.jsonl"
CAT = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(fresh_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("compat") / "serve.log"
    process = switchboard_server(fresh_world.home, fresh_world.base.path, log, "--engine", "hf")
    try:
        process.wait_ready("/readyz")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_the_openai_client_on_lists_token_ids_samples_and_echo(client: openai.OpenAI) -> None:
    one = client.completions.create(model="base", prompt="Paris is", max_tokens=4, temperature=0)
    two = client.completions.create(
        model="base", prompt=["Paris is", "Rome is"], max_tokens=4, temperature=0
    )
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == one.choices[0].text
    assert two.usage is not None and one.usage is not None
    assert two.usage.prompt_tokens > one.usage.prompt_tokens

    ids = client.completions.create(
        model="base",
        prompt=[504, 314],
        max_tokens=1,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    assert (ids.choices[0].model_extra or {})["prompt_token_ids"] == [504, 314]
    as_ids = client.completions.create(
        model="math", prompt=[[504, 314], [504, 314]], max_tokens=4, temperature=0
    )
    assert as_ids.choices[0].text == as_ids.choices[1].text

    samples = client.completions.create(
        model="math", prompt="Once upon a time", max_tokens=8, temperature=1.0, n=3, seed=4
    )
    again = client.completions.create(
        model="math", prompt="Once upon a time", max_tokens=8, temperature=1.0, n=3, seed=4
    )
    texts = [c.text for c in samples.choices]
    assert texts == [c.text for c in again.choices]  # seeded per sample
    assert len(set(texts)) > 1  # and each its own sample

    echoed = client.completions.create(
        model="base", prompt="The sky is blue", max_tokens=0, echo=True, logprobs=1
    )
    choice = echoed.choices[0]
    assert choice.text == "The sky is blue"
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    assert choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None and lp < 0 for lp in choice.logprobs.token_logprobs[1:])
    tops = choice.logprobs.top_logprobs or []
    assert tops[0] is None and all(len(top) == 1 for top in tops[1:])  # as logprobs asked
    assert "".join(choice.logprobs.tokens or []) == "The sky is blue"


def test_the_openai_client_on_structured_output(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Describe a cat as JSON: name and age."}]
    answer = client.chat.completions.create(
        model="math",
        messages=messages,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": CAT}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), CAT)
    choice = client.chat.completions.create(
        model="base",
        messages=messages,
        max_tokens=10,
        extra_body={"guided_choice": ["Python", "Rust"]},
    )
    assert choice.choices[0].message.content in ("Python", "Rust")
    with pytest.raises(openai.BadRequestError, match="does not compile"):
        client.chat.completions.create(
            model="base", messages=messages, extra_body={"guided_regex": "(["}
        )


def test_models_in_vllms_shape(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert models[0].id == "base"
    adapters = [m for m in models if m.id not in ("base", "auto")]
    assert adapters and all(m.parent == "base" for m in adapters)  # type: ignore[attr-defined]
    assert client.models.retrieve("math").id == "math"


def test_langchain_chat_and_completion_models(server: ServerProcess, client: openai.OpenAI) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI, OpenAI

    chat = ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="none", model="math", temperature=0, max_tokens=8
    )
    direct = client.chat.completions.create(
        model="math", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )
    blocks = HumanMessage(content=[{"type": "text", "text": "hi"}])
    assert chat.invoke([blocks]).content == direct.choices[0].message.content
    named = {"title": "cat", **CAT}  # LangChain names the schema by its title
    structured = chat.with_structured_output(named, method="json_schema").bind(max_tokens=60)
    jsonschema.validate(structured.invoke("Describe a cat: its name and age."), CAT)

    llm = OpenAI(
        base_url=f"{server.url}/v1", api_key="none", model="base", temperature=0, max_tokens=5
    )
    prompts = ["The capital of France is", "Two plus two is"]
    batched = llm.generate(prompts)  # one request with a list of prompts
    for prompt, generations in zip(prompts, batched.generations, strict=True):
        alone = client.completions.create(model="base", prompt=prompt, max_tokens=5, temperature=0)
        assert generations[0].text == alone.choices[0].text


def _tasks(folder: Path) -> Path:
    """Two offline lm-eval tasks over tests/data/compat_facts.jsonl."""
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(FACTS)}},
        "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
    }
    choice = {
        **common,
        "task": "switchboard_facts_choice",
        "output_type": "multiple_choice",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }
    generation = {
        **common,
        "task": "switchboard_facts_generation",
        "output_type": "generate_until",
        "doc_to_target": " {{target}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "ignore_case": True}],
    }
    for task in (choice, generation):
        (folder / f"{task['task']}.yaml").write_text(yaml.safe_dump(task))
    return folder


def _evaluate(
    server: ServerProcess, model: str, base_dir: Path, tasks: Path, cache: Path
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    args = (
        f"model={model},base_url={server.url}/v1/completions,tokenizer={base_dir},"
        "tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=1,max_retries=1"
    )
    results: dict[str, Any] = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=["switchboard_facts_choice", "switchboard_facts_generation"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
        cache_requests=False,
    )
    return results


def test_lm_eval_runs_both_task_kinds_and_its_likelihoods_are_the_engines(
    server: ServerProcess,
    fresh_world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = _tasks(tmp_path)
    base_dir = fresh_world.base.path
    runs = {m: _evaluate(server, m, base_dir, tasks, tmp_path) for m in ("base", "math:1")}
    for results in runs.values():
        assert 0.0 <= results["results"]["switchboard_facts_choice"]["acc,none"] <= 1.0
        assert "exact_match,none" in results["results"]["switchboard_facts_generation"]
        generated = results["samples"]["switchboard_facts_generation"]
        assert len(generated) == 6 and all(s["resps"][0][0] is not None for s in generated)
    base_scores = [s["resps"] for s in runs["base"]["samples"]["switchboard_facts_choice"]]
    adapter_scores = [s["resps"] for s in runs["math:1"]["samples"]["switchboard_facts_choice"]]
    assert base_scores != adapter_scores  # the adapter served them

    # The same log-likelihoods from the transformers engine, directly: each context and
    # continuation tokenized as lm-eval does, the continuation's tokens' log probabilities.
    engine = HFEngine(base_dir)
    docs = [json.loads(line) for line in FACTS.read_text().splitlines()]
    samples = runs["base"]["samples"]["switchboard_facts_choice"]
    for sample in samples:
        doc = docs[sample["doc_id"]]
        context = f"Question: {doc['question']}\nAnswer:"
        for choice, response in zip(doc["choices"], sample["resps"], strict=True):
            continuation = " " + choice  # lm-eval's default target_delimiter
            whole = engine.tokens.encode(context + continuation)
            start = len(engine.tokens.encode(context))
            request = GenerationRequest(
                "", None, SamplingParams(max_tokens=0, prompt_logprobs=0), tuple(whole)
            )
            (answer,) = generate(engine, [request])
            assert not isinstance(answer, Exception) and answer.prompt_logprobs is not None
            direct = sum(step.logprob for step in answer.prompt_logprobs[start:] if step)
            assert response[0][0] == pytest.approx(direct, abs=1e-6)
