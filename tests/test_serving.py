"""The HTTP API through the real app (TestClient) and the official `openai` client, on the
real base with the transformers+PEFT engine and real LoRA adapters from the registry."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from serving_world import (
    PROMPTS,
    World,
    chat,
    make_lora,
    openai_client,
    peft_greedy,
    requests,
    still_serves,
)

from switchboard_lora.registry import (
    PROJECTIONS,
)
from switchboard_lora.router.devices import torch_device
from switchboard_lora.serving.engines.interface import SamplingParams
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.http.openai_format import ROUTE_HEADER
from switchboard_lora.serving.settings import ServerSettings

pytestmark = pytest.mark.slow


def test_auto_routes_and_says_what_served(client: openai.OpenAI) -> None:
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
    stream = chat(
        client, "math", prompt, max_tokens=24, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, first, usage = [], None, None, None
    for event in stream:
        first = first or event.model_extra.get("switchboard")
        usage = event.usage or usage
        if not event.choices:  # the usage chunk
            continue
        delta = event.choices[0].delta.content
        if delta:
            pieces.append(delta)
        finish = event.choices[0].finish_reason or finish
    assert "".join(pieces) == whole and finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 24
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


def test_what_real_clients_send_is_understood(client: openai.OpenAI) -> None:
    """LangChain's content parts, the `developer` role, an assistant turn with null content,
    `top_logprobs: 0`, and `client.models.retrieve` (issue 33, first part)."""
    plain: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi\nthere"},
    ]
    expected = client.chat.completions.create(
        model="math", messages=plain, max_tokens=6, temperature=0
    )
    two_parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
    as_clients_send: Any = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": two_parts},
    ]
    parts = client.chat.completions.create(
        model="math", messages=as_clients_send, max_tokens=6, temperature=0, top_logprobs=0
    )
    assert parts.choices[0].message.content == expected.choices[0].message.content
    turn: Any = [*plain, {"role": "assistant", "content": None}, {"role": "user", "content": "?"}]
    assert client.chat.completions.create(model="math", messages=turn, max_tokens=2).choices
    image: Any = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="math", messages=image)
    assert "image_url" in str(refused.value)
    assert refused.value.body["param"] == "content"  # type: ignore[index]

    assert client.models.retrieve("math:1").id == "math:1"
    assert client.models.retrieve("math").model_extra["switchboard"]["ref"] == "math:1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_mix_models_health_and_metrics(
    client: openai.OpenAI, http: TestClient, engine: str
) -> None:
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
    assert ("notes" in ids) == (engine == "hf")  # a prefix adapter: vLLM has none
    assert ids["math:1"].model_extra["root"] == ids["base"].model_extra["root"]

    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    chosen = ready.json()["engine"]  # which engine serves, where, and why
    assert chosen["engine"] == engine
    assert chosen["reason"] == f"engine {engine} (SWITCHBOARD_ENGINE)"
    assert chosen["device"] == str(torch_device("auto"))  # SWITCHBOARD_DEVICE's default
    metrics = http.get("/metrics").text
    assert 'switchboard_requests_total{adapter="sql:1",decision="adapter"}' in metrics


def _metric(http: TestClient, name: str, adapter: str) -> float:
    pattern = rf'{name}{{adapter="{adapter}",decision="[^"]+"}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, http.get("/metrics").text))


def test_a_stream_times_its_first_token_per_adapter(
    client: openai.OpenAI, http: TestClient
) -> None:
    first_tokens = "switchboard_first_token_seconds_count"
    before = _metric(http, first_tokens, "math:1")
    plain = _metric(http, "switchboard_requests_total", "math:1")
    chat(client, "math:1", "What is 2 + 2?")  # a whole answer: no first token to time
    assert _metric(http, first_tokens, "math:1") == before
    stream = client.chat.completions.create(
        model="math:1", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    assert [c for c in stream]
    assert _metric(http, first_tokens, "math:1") == before + 1
    assert _metric(http, "switchboard_requests_total", "math:1") == plain + 2
    assert _metric(http, "switchboard_request_errors_total", "math:1") == 0


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(
    client: openai.OpenAI, http: TestClient, world: World, engine: str, tmp_path: Path
) -> None:
    registry, base = world.registry, world.base
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
    before = chat(client, "math", "hi")
    name = f"broken-{engine}"
    manifest = registry.publish(make_lora(base, tmp_path / "broken", seed=9), name, base)
    weights = manifest.files["adapter_model.safetensors"]
    path = registry.blobs.path(weights.sha256)
    path.chmod(0o644)
    path.write_bytes(b"corrupted")
    with pytest.raises(openai.UnprocessableEntityError, match="registry verify"):
        chat(client, name, "hi")
    still_serves(client, before)


def test_prefix_adapters_on_each_engine(client: openai.OpenAI, engine: str) -> None:
    if engine == "hf":
        answer = chat(client, "notes", "hi")
        assert answer.model_extra["switchboard"]["served"]["ref"] == "notes:1"
    else:
        before = chat(client, "math", "hi")
        with pytest.raises(openai.BadRequestError, match="vLLM has no prefix adapters"):
            chat(client, "notes", "hi")
        still_serves(client, before)


def test_a_version_published_while_serving_is_served_without_restart(
    client: openai.OpenAI, world: World, engine: str, tmp_path: Path
) -> None:
    name = f"fresh-{engine}"
    for version, seed in ((1, 21), (2, 22)):
        source = make_lora(world.base, tmp_path / str(version), seed, scale=0.5)
        world.registry.publish(source, name, world.base)
        info = chat(client, name, "Name a colour.").model_extra["switchboard"]
        assert info["served"]["ref"] == f"{name}:{version}"
        assert info["served"]["served_name"] == world.registry.resolve(name).served_name


def test_a_served_name_and_token_ids_as_a_gateway_asks_for_them(
    http: TestClient, world: World
) -> None:
    """What a gateway in front of this server sends: `model=<served name>` (exactly that
    content) and `return_token_ids`, streamed; the chunks' ids are the answer's tokens."""
    served = world.registry.resolve("math").served_name
    body = {"model": served, "prompt": "Twelve times twelve is", "max_tokens": 12}
    body |= {"temperature": 0, "return_token_ids": True}
    whole = http.post("/v1/completions", json=body).json()
    assert whole["switchboard"]["served"]["served_name"] == served
    assert whole["switchboard"]["reason"] == "explicit ref"
    ids = whole["choices"][0]["token_ids"]
    assert len(ids) == whole["usage"]["completion_tokens"] > 0

    with http.stream(
        "POST", "/v1/completions", json=body | {"stream": True, "model": served}
    ) as answer:
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert all("token_ids" in c for c in chunks)
    assert [t for c in chunks for t in c["token_ids"]] == ids
    assert "".join(c["text"] for c in chunks) == whole["choices"][0]["text"]

    other = f"math-v1-{'0' * 12}"  # math:1's number, other content
    missing = http.post("/v1/completions", json=body | {"model": other})
    assert missing.status_code == 404 and "content" in missing.json()["error"]["message"]
    plain = http.post("/v1/completions", json=body | {"return_token_ids": False}).json()
    assert "token_ids" not in plain["choices"][0]


@pytest.mark.vllm
def test_vllm_refuses_a_rank_above_its_limit(
    servers: Callable[[str], TestClient], world: World, tmp_path: Path
) -> None:
    wide = make_lora(world.base, tmp_path / "wide", 5, rank=32)
    world.registry.publish(wide, "wide", world.base)
    client = openai_client(servers("vllm"))
    before = chat(client, "math", "hi")
    with pytest.raises(openai.BadRequestError, match="rank 32 is above this server's max_lora"):
        chat(client, "wide", "hi")
    still_serves(client, before)


@pytest.mark.vllm
def test_both_engines_give_the_same_greedy_tokens_for_adapters_and_mixtures(
    servers: Callable[[str], TestClient], world: World, tmp_path: Path
) -> None:
    """fp32 on both engines. Tokens must agree up to the first step where PEFT's top two
    logits are within 0.01 (beyond a near-tie, either answer is right)."""
    from switchboard_lora.serving.mixture import build_mixture

    for name, seed in (("strong-a", 31), ("strong-b", 32)):
        source = make_lora(
            world.base, tmp_path / name, seed, scale=0.5, rank=8, modules=PROJECTIONS
        )
        world.registry.publish(source, name, world.base)
    mixture = build_mixture(
        world.registry, [("strong-a", 0.6), ("strong-b", 0.4)], world.base
    ).version
    hf, vllm = servers("hf"), servers("vllm")
    compared, changed = 0, 0
    for ref in ("strong-a", mixture.ref):
        version = world.registry.resolve(ref)
        for text in PROMPTS:
            outputs = {}
            for http in (hf, vllm):
                service = http.app.state.service  # type: ignore[attr-defined]
                prompt = service.engine.tokens.render_chat([{"role": "user", "content": text}])
                request = service.prepare(prompt, version, SamplingParams(max_tokens=16))
                outputs[service.engine.name] = list(
                    http.portal.call(service.engine.submit, request).token_ids  # type: ignore[union-attr]
                )
                base_request = service.prepare(prompt, None, SamplingParams(max_tokens=16))
                base_tokens = http.portal.call(service.engine.submit, base_request).token_ids  # type: ignore[union-attr]
            _, path = world.registry.checkout(version.ref)
            reference, tops = peft_greedy(world.base.path, path, prompt, 16)
            margins = [first - second for first, second in tops]
            safe = next((i for i, m in enumerate(margins) if m < 0.01), len(margins))
            assert outputs["hf"][:safe] == reference[:safe], (ref, text)
            assert outputs["vllm"][:safe] == reference[:safe], (ref, text)
            compared += min(safe, len(reference))
            changed += outputs["vllm"] != list(base_tokens)
    assert compared >= 40  # most steps are not near-ties: the comparison has teeth
    assert changed >= 3  # and the adapters do change the answers

    # vLLM serves the mixture over HTTP too, named as a mix of the two.
    answer = openai_client(vllm).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": PROMPTS[0]}],
        max_tokens=8,
        temperature=0,
        extra_body={
            "switchboard": {
                "mix": [{"ref": "strong-a", "weight": 0.6}, {"ref": "strong-b", "weight": 0.4}]
            }
        },
    )
    assert answer.model_extra["switchboard"]["served"]["ref"] == mixture.ref


def test_before_the_engine_is_up_the_server_answers_503_saying_it_is_starting(
    tmp_path: Path,
) -> None:
    http = TestClient(create_app(ServerSettings(home=tmp_path)))  # its lifespan has not run
    ready = http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "reason": "the server is starting"}
    models = http.get("/v1/models")  # come back later: a 503, not a 429 rate limit
    assert models.status_code == 503, models.text
    assert models.json()["error"]["message"] == "the server is starting"


def test_api_keys_are_enforced_when_configured(tmp_path: Path) -> None:
    """The key check runs before anything else: no model needs to be loaded to test it."""
    settings = ServerSettings(home=tmp_path, api_keys=["client-key"], admin_keys=["admin-key"])
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
        assert allowed.status_code == 503  # past the key check: the server is starting
    assert http.get("/healthz").status_code == 200  # probes need no key
    alias = "/v1/admin/adapters/math/aliases/prod"
    for key, status in (("client-key", 403), ("admin-key", 503), ("wrong", 401)):
        answer = http.put(alias, json={"version": 1}, headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == status, key
    assert (
        "admin key"
        in http.put(
            alias, json={"version": 1}, headers={"authorization": "Bearer client-key"}
        ).json()["error"]["message"]
    )
    open_app = TestClient(create_app(ServerSettings(home=tmp_path)))
    assert open_app.post("/v1/chat/completions", json=body).status_code == 503
    assert open_app.put(alias, json={"version": 1}).status_code == 503


def test_admin_api_moves_aliases_and_route_examples(
    servers: Callable[[str], TestClient], world: World, tmp_path: Path
) -> None:
    http = servers("hf")
    client = openai_client(http)
    source = make_lora(world.base, tmp_path / "v2", 41)
    world.registry.publish(source, "sql", world.base)  # sql:2, not yet live (sql:1 is prod)
    world.registry.set_alias("sql", "prod", 1)
    moved = http.put("/v1/admin/adapters/sql/aliases/canary", json={"version": 2})
    assert moved.status_code == 200 and moved.json()["ref"] == "sql:2"
    served = chat(client, "sql@canary", "hi").model_extra["switchboard"]["served"]
    assert served["ref"] == "sql:2"
    assert http.delete("/v1/admin/adapters/sql/aliases/canary").status_code == 200
    with pytest.raises(openai.NotFoundError):
        chat(client, "sql@canary", "hi")
    assert http.put("/v1/admin/adapters/sql/aliases/canary", json={"version": 9}).status_code == 404
    bad = http.put("/v1/admin/adapters/sql/aliases/canary", json={"version": "two"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "version"

    text = "Tell me about the weather on Mars today."
    before = chat(client, "auto", text).model_extra["switchboard"]
    target = "sql" if before["decision"] == "base" else "base"
    added = http.post(f"/v1/admin/routes/{target}/examples", json={"examples": [text]})
    assert added.json() == {"route": target, "added": 1}
    after = chat(client, "auto", text).model_extra["switchboard"]
    assert after["decision"] == ("adapter" if target == "sql" else "base"), after["scores"]
    listed = http.get(f"/v1/admin/routes/{target}/examples").json()["examples"]
    ids = [e["id"] for e in listed if e["text"] == text]
    removed = http.delete(f"/v1/admin/routes/{target}/examples", params={"id": ids})
    assert removed.json()["removed"] == 1
    assert chat(client, "auto", text).model_extra["switchboard"]["decision"] == before["decision"]
