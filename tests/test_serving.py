"""The HTTP API through the real app (TestClient) and the official `openai` client, on the
real base with the transformers+PEFT engine and real LoRA adapters from the registry."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from registry import BaseModelInfo, BaseModels, ManifestDraft, Registry, Settings
from serving.app import ROUTE_HEADER, create_app
from trainer.data import load_jsonl
from trainer.loop import routing_sample

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"
NEGATIVES = [
    "What is the capital of France?",
    "Which films did Alfred Hitchcock direct?",
    "Recommend a good novel for the holidays.",
    "How do I get red wine out of a carpet?",
    "Write a short poem about autumn.",
]


def requests(domain: str, split: str, count: int) -> list[str]:
    return routing_sample(load_jsonl(DATA / domain / f"{split}.jsonl").examples, count, seed=0)


def _lora(base: BaseModelInfo, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data *= 0.05
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(
    real_base: BaseModelInfo,
    tmp_path_factory: pytest.TempPathFactory,
    foreign_lora_dir: Path,
    other_base_dir: Path,
) -> Iterator[tuple[TestClient, Registry, BaseModelInfo]]:
    home = tmp_path_factory.mktemp("serve-home")
    settings = Settings(home=home, base=str(real_base.path))
    registry = Registry(settings.registry_url, home)
    base = BaseModels(home / "bases").get(str(real_base.path))
    for seed, name in enumerate(("math", "sql"), start=1):
        source = _lora(base, tmp_path_factory.mktemp(name), seed)
        draft = ManifestDraft(routing_examples=requests(name, "train", 30))
        registry.publish(source, name, base, draft=draft)
    registry.routes.add_examples("base", NEGATIVES, "tests")
    other = BaseModels(home / "bases").get(str(other_base_dir))
    registry.publish(foreign_lora_dir, "foreign", other)
    with TestClient(create_app(settings)) as client:
        yield client, registry, base
    registry.close()


@pytest.fixture(scope="module")
def client(served: tuple[TestClient, Registry, BaseModelInfo]) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=served[0])


def chat(client: openai.OpenAI, model: str, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 12),
        **kwargs,
    )


def test_auto_routes_and_says_what_served(
    client: openai.OpenAI, served: tuple[TestClient, Registry, BaseModelInfo]
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": requests("sql", "eval", 1)[0]}],
        temperature=0,
        max_tokens=8,
    )
    header = json.loads(raw.headers[ROUTE_HEADER])
    answer = raw.parse()
    info = answer.model_extra["switchboard"]
    assert header["decision"] == info["decision"] == "adapter"
    assert info["served"]["ref"] == header["served"]["ref"] == "sql:1"
    assert set(info["scores"]) == {"math", "sql", "base"}
    assert answer.usage.completion_tokens == 8 and answer.choices[0].finish_reason == "length"

    general = chat(client, "auto", "What is the capital of France?", max_tokens=20)
    assert general.model_extra["switchboard"]["decision"] == "base", general.model_extra[
        "switchboard"
    ]["scores"]
    assert "Paris" in general.choices[0].message.content

    explicit = chat(client, "math:1", "hello")
    assert explicit.model_extra["switchboard"]["reason"] == "explicit ref"
    assert explicit.model_extra["switchboard"]["served"]["ref"] == "math:1"


def test_streaming_gives_the_same_text_as_one_answer(client: openai.OpenAI) -> None:
    prompt = "Name three primary colours."
    whole = chat(client, "math", prompt, max_tokens=24).choices[0].message.content
    stream = chat(client, "math", prompt, max_tokens=24, stream=True)
    pieces, finish, first = [], None, None
    for event in stream:
        first = first or event.model_extra.get("switchboard")
        delta = event.choices[0].delta.content
        if delta:
            pieces.append(delta)
        finish = event.choices[0].finish_reason or finish
    assert "".join(pieces) == whole and finish in ("stop", "length")
    assert first is not None and first["served"]["ref"] == "math:1"

    completion = client.completions.create(
        model="base", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert completion.choices[0].text.strip()


def test_concurrent_requests_for_different_adapters(client: openai.OpenAI) -> None:
    answers: dict[str, str] = {}
    alone = {
        m: chat(client, m, "Say something nice.").choices[0].message.content
        for m in ("math", "sql", "base")
    }

    def ask(model: str) -> None:
        answers[model] = chat(client, model, "Say something nice.").choices[0].message.content

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("math", "sql", "base")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == alone  # batched together, each row still gets its own adapter


def test_mix_models_health_and_metrics(
    client: openai.OpenAI, served: tuple[TestClient, Registry, BaseModelInfo]
) -> None:
    http = served[0]
    mixed = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        extra_body={
            "switchboard": {"mix": [{"ref": "math", "weight": 0.7}, {"ref": "sql", "weight": 0.3}]}
        },
    )
    info = mixed.model_extra["switchboard"]
    assert info["decision"] == "mix" and info["served"]["ref"].startswith("mix-")
    assert [a["weight"] for a in info["adapters"]] == [0.7, 0.3]

    ids = {m.id: m for m in client.models.list().data}
    assert {"auto", "base", "math", "math:1", "sql", "sql:1"} <= set(ids)
    assert "foreign" not in ids  # made for another base: not servable here
    assert ids["math:1"].model_extra["root"] == ids["base"].model_extra["root"]

    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    metrics = http.get("/metrics").text
    assert 'switchboard_requests_total{adapter="sql:1",decision="adapter"}' in metrics


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    client: openai.OpenAI, served: tuple[TestClient, Registry, BaseModelInfo], tmp_path: Path
) -> None:
    http, registry, base = served
    with pytest.raises(openai.NotFoundError, match="no adapter named 'legal'"):
        chat(client, "legal", "hi")
    with pytest.raises(openai.BadRequestError, match="invalid ref"):
        chat(client, "math:0", "hi")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(client, "base", "hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="context"):
        chat(client, "base", "hi", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="another base model"):
        chat(client, "foreign", "hi")
    with pytest.raises(openai.BadRequestError, match="empty"):
        chat(client, "auto", "   ")
    malformed = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert (
        malformed.status_code == 400
        and malformed.json()["error"]["type"] == "invalid_request_error"
    )

    # A corrupted adapter file: refused with a clear error, nothing else affected.
    manifest = registry.publish(_lora(base, tmp_path / "broken", seed=9), "broken", base)
    weights = manifest.files["adapter_model.safetensors"]
    path = registry.blobs.path(weights.sha256)
    path.chmod(0o644)
    path.write_bytes(b"corrupted")
    with pytest.raises(openai.UnprocessableEntityError, match="registry verify"):
        chat(client, "broken", "hi")
    assert chat(client, "math", "hi").choices[0].message.content is not None


def test_api_keys_are_enforced_when_configured(tmp_path: Path) -> None:
    """The key check runs before anything else: no model needs to be loaded to test it."""
    settings = Settings(home=tmp_path, api_keys=["client-key"], admin_keys=["admin-key"])
    http = TestClient(create_app(settings))  # no lifespan: the engine never starts
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "client-key"}):
        refused = http.post("/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
    assert http.get("/v1/models").status_code == 401
    for key in ("client-key", "admin-key"):
        allowed = http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        assert allowed.status_code == 429  # past the key check: the server is not ready
    assert http.get("/healthz").status_code == 200  # probes need no key
    open_app = TestClient(create_app(Settings(home=tmp_path)))
    assert open_app.post("/v1/chat/completions", json=body).status_code == 429
