"""The serving world shared by the HTTP tests: one registry (math, sql, a prefix adapter, an
adapter for another base), a running app per engine on it (started once a session), and the
`openai` client. A plugin of `conftest`; test modules import its helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from support.paths import DATA
from switchboard_lora.registry import (
    BaseModelInfo,
    BaseModels,
    ManifestDraft,
    Registry,
    RegistrySettings,
)
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.settings import ServerSettings
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.loop import routing_sample
from switchboard_lora.trainer.synthetic import random_adapter

ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
]
NEGATIVES = [
    "What is the capital of France?",
    "Which films did Alfred Hitchcock direct?",
    "Recommend a good novel for the holidays.",
    "How do I get red wine out of a carpet?",
    "Write a short poem about autumn.",
]


def requests(domain: str, split: str, count: int) -> list[str]:
    return routing_sample(load_jsonl(DATA / domain / f"{split}.jsonl").examples, count, seed=0)


def make_lora(
    base: BaseModelInfo,
    out: Path,
    seed: int,
    *,
    scale: float = 0.05,
    rank: int = 4,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> Path:
    return random_adapter(base.path, out, "lora", seed, rank, modules=modules, scale=scale)


@dataclass
class World:
    """One registry, shared by a server per engine (as replicas would share it)."""

    home: Path
    registry: Registry
    base: BaseModelInfo


def _world(
    real_base: BaseModelInfo,
    tmp_path_factory: pytest.TempPathFactory,
    foreign_lora_dir: Path,
    other_base_dir: Path,
) -> Iterator[World]:
    made = make_world(real_base, tmp_path_factory, foreign_lora_dir, other_base_dir)
    yield made
    made.registry.close()


# The session's shared world; and one for a module alone, whose tests change its registry.
world = pytest.fixture(_world, scope="session", name="world")
fresh_world = pytest.fixture(_world, scope="module", name="fresh_world")


def make_world(
    real_base: BaseModelInfo,
    tmp_path_factory: pytest.TempPathFactory,
    foreign_lora_dir: Path,
    other_base_dir: Path,
) -> World:
    """A new registry of the world's adapters (for tests that must not change the shared one)."""
    home = tmp_path_factory.mktemp("serve-home")
    registry = Registry(RegistrySettings(home=home).registry_url, home)
    base = BaseModels(home / "bases").get(str(real_base.path))
    for seed, name in enumerate(("math", "sql"), start=1):
        source = make_lora(base, tmp_path_factory.mktemp(name), seed)
        draft = ManifestDraft(routing_examples=requests(name, "train", 30))
        registry.publish(source, name, base, draft=draft)
    registry.routes.add_examples("base", NEGATIVES, "tests")
    prefix = random_adapter(base.path, tmp_path_factory.mktemp("notes"), "prefix", seed=3)
    registry.publish(prefix, "notes", base)
    other = BaseModels(home / "bases").get(str(other_base_dir))
    registry.publish(foreign_lora_dir, "foreign", other)
    return World(home, registry, base)


@pytest.fixture(scope="session")
def servers(world: World) -> Iterator[Callable[[str], TestClient]]:
    """A running app per engine, started on first use and shared by the session's tests."""
    with ExitStack() as stack:
        running: dict[str, TestClient] = {}

        def server(engine: str) -> TestClient:
            if engine not in running:
                settings = ServerSettings(
                    home=world.home,
                    base=str(world.base.path),
                    engine=engine,
                    max_lora_rank=16,
                    max_loras=4,
                )
                running[engine] = stack.enter_context(TestClient(create_app(settings)))
            return running[engine]

        yield server


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def http(servers: Callable[[str], TestClient], engine: str) -> TestClient:
    return servers(engine)


@pytest.fixture
def client(http: TestClient) -> openai.OpenAI:
    return openai_client(http)


def openai_client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http)


def chat(client: openai.OpenAI, model: str, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 12),
        **kwargs,
    )


def still_serves(client: openai.OpenAI, before: Any) -> None:
    """After a refused request, `math` answers as it did before it: same greedy text, same
    version (the refusal touched nothing else)."""
    after = chat(client, "math", "hi")
    assert after.model_extra["switchboard"]["served"]["ref"] == "math:1"
    assert after.choices[0].message.content == before.choices[0].message.content
    assert after.choices[0].finish_reason == before.choices[0].finish_reason


def peft_greedy(
    base_dir: Path,
    adapter: Path | None,
    prompt: str,
    count: int,
    *,
    device: str = "cpu",
    dtype: str = "float32",
) -> tuple[list[int], list[tuple[float, float]]]:
    """PEFT's (or plain transformers') greedy tokens for a prompt, on a fresh model, batch of
    one, up to its end of sequence; and per step the two largest logits (near-ties show)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    model = model.to(device)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).to(device)
    encoded = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.inference_mode():
        out = model.generate(
            **encoded,
            max_new_tokens=count,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    tokens: list[int] = out.sequences[0, encoded["input_ids"].shape[1] :].tolist()
    tops = [tuple(s[0].float().topk(2).values.tolist()) for s in out.scores]
    eos = tokenizer.eos_token_id
    end = tokens.index(eos) if eos in tokens else len(tokens)
    return tokens[:end], tops[:end]  # type: ignore[return-value]
