# ruff: noqa: E501  (the malformed-request corpus reads best as one row per case)
"""Issue 15: no request, client or adapter can hurt another. Each numbered item of the issue
has a test here (or names where it is: engine-level ones in test_hf_engine, registry-level
ones in test_registry_contract, feedback in test_experiments), on both engines where the item
concerns serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from serving_world import World

from switchboard_lora.registry import Registry
from switchboard_lora.serving.build import build_service
from switchboard_lora.serving.engines.interface import AdapterSpec, GenerationRequest
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.http.threaded import serve_in_thread
from switchboard_lora.serving.settings import ServerSettings

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "base", "messages": HI, "max_tokens": 2, "temperature": 0, **fields}


# (what, method, path, body (dict: JSON; bytes: raw), headers, status, substring, param)
MALFORMED: list[tuple[str, str, str, Any, dict[str, str], int, str, str | None]] = [
    ("version overflow", "POST", CHAT, _chat(model="math:99999999999999999999999"), {}, 400, "invalid ref", None),
    ("arabic digit", "POST", CHAT, _chat(model="math:\u0661"), {}, 400, "invalid ref", None),
    ("lone surrogate", "POST", CHAT, b'{"model":"auto","messages":[{"role":"user","content":"\\ud800 hi"}]}', {}, 400, "Unicode", "messages.0.content"),
    ("invalid utf-8", "POST", CHAT, b'{"model":"base","messages":[{"role":"user","content":"\xff\xfe"}]}', {}, 400, "", None),
    ("deep nesting", "POST", CHAT, b'{"model":"base","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400, "", None),
    ("malformed json", "POST", CHAT, b'{"model": "base", "messages": [', {}, 400, "not valid JSON", None),
    ("unknown path", "POST", "/v1/nope", {}, {}, 404, "unknown request URL", None),
    ("wrong method", "DELETE", CHAT, None, {}, 405, "", None),
    ("seed too large", "POST", CHAT, _chat(seed=2**64), {}, 400, "seed", "seed"),
    ("too many stops", "POST", CHAT, _chat(stop=list("abcde")), {}, 400, "stop", "stop"),
    ("max_tokens absurd", "POST", CHAT, _chat(max_tokens=10**12), {}, 400, "max_tokens", "max_tokens"),
    ("n too many", "POST", CHAT, _chat(n=1000), {}, 400, "n", "n"),
    ("n streamed", "POST", CHAT, _chat(n=2, stream=True), {}, 400, "n is not supported", "n"),
    ("prompts times n", "POST", "/v1/completions", {"model": "base", "prompt": ["a"] * 200, "n": 2}, {}, 400, "prompts times n", "n"),
    ("auto, several prompts", "POST", "/v1/completions", {"model": "auto", "prompt": ["a", "b"]}, {}, 400, "one prompt at a time", None),
    ("empty prompt list", "POST", "/v1/completions", {"model": "base", "prompt": []}, {}, 400, "", "prompt"),
    ("prompt id outside vocabulary", "POST", "/v1/completions", {"model": "base", "prompt": [1, 10**7]}, {}, 400, "outside the vocabulary", None),
    ("negative prompt id", "POST", "/v1/completions", {"model": "base", "prompt": [1, -3]}, {}, 400, "", None),
    ("stop token outside vocabulary", "POST", CHAT, _chat(stop_token_ids=[10**7]), {}, 400, "outside the vocabulary", None),
    ("logit_bias key", "POST", CHAT, _chat(logit_bias={"abc": 1}), {}, 400, "token ids", "logit_bias"),
    ("logit_bias value", "POST", CHAT, _chat(logit_bias={"5": 1000}), {}, 400, "between -100 and 100", "logit_bias"),
    ("allowed_token_ids empty", "POST", CHAT, _chat(allowed_token_ids=[]), {}, 400, "", "allowed_token_ids"),
    ("repetition_penalty 0", "POST", CHAT, _chat(repetition_penalty=0), {}, 400, "", "repetition_penalty"),
    ("top_k -2", "POST", CHAT, _chat(top_k=-2), {}, 400, "", "top_k"),
    ("min_p 2", "POST", CHAT, _chat(min_p=2), {}, 400, "", "min_p"),
    ("presence_penalty 3", "POST", CHAT, _chat(presence_penalty=3), {}, 400, "", "presence_penalty"),
    ("use_beam_search", "POST", CHAT, _chat(use_beam_search=True), {}, 400, "use_beam_search is not supported", "use_beam_search"),
    ("bad_words", "POST", CHAT, _chat(bad_words=["x"]), {}, 400, "bad_words", "bad_words"),
    ("chat echo", "POST", CHAT, _chat(echo=True), {}, 400, "echo", "echo"),
    ("echo streamed", "POST", "/v1/completions", {"model": "base", "prompt": "a", "echo": True, "stream": True}, {}, 400, "echo", "echo"),
    ("structural_tag", "POST", CHAT, _chat(response_format={"type": "structural_tag"}), {}, 400, "structural_tag", "response_format"),
    ("json_schema without schema", "POST", CHAT, _chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), {}, 400, "json_schema.schema", "response_format"),
    ("malformed regex", "POST", CHAT, _chat(guided_regex="(["), {}, 400, "does not compile", None),
    ("schema not JSON", "POST", CHAT, _chat(guided_json="{nope"), {}, 400, "not valid JSON", "guided_json"),
    ("schema of unknown type", "POST", CHAT, _chat(guided_json={"type": "nonsense"}), {}, 400, "does not compile", None),
    ("two constraints", "POST", CHAT, _chat(guided_regex="a+", guided_choice=["a"]), {}, 400, "one structured output constraint", "guided_choice"),
    ("structured_outputs of two kinds", "POST", CHAT, _chat(structured_outputs={"regex": "a", "choice": ["a"]}), {}, 400, "exactly one", "structured_outputs"),
    ("malformed grammar", "POST", CHAT, _chat(structured_outputs={"grammar": "root ::= "}), {}, 400, "does not compile", None),
    ("tools", "POST", CHAT, _chat(tools=[{"type": "function", "function": {"name": "f"}}]), {}, 400, "tools is not supported", "tools"),
    ("tool_choice", "POST", CHAT, _chat(tool_choice="required"), {}, 400, "tool_choice", "tool_choice"),
    ("functions", "POST", CHAT, _chat(functions=[{"name": "f"}]), {}, 400, "functions", "functions"),
    ("best_of", "POST", "/v1/completions", {"model": "base", "prompt": "a", "best_of": 3}, {}, 400, "best_of", "best_of"),
    ("logprobs streamed", "POST", CHAT, _chat(logprobs=True, stream=True), {}, 400, "logprobs", "logprobs"),
    ("top_logprobs alone", "POST", CHAT, _chat(top_logprobs=2), {}, 400, "top_logprobs needs logprobs", "top_logprobs"),
    ("top_logprobs, logprobs false", "POST", CHAT, _chat(top_logprobs=2, logprobs=False), {}, 400, "needs logprobs", "top_logprobs"),
    ("top_logprobs streamed alone", "POST", CHAT, _chat(top_logprobs=2, stream=True), {}, 400, "needs logprobs", "top_logprobs"),
    ("stream_options, no stream", "POST", CHAT, _chat(stream_options={"include_usage": True}), {}, 400, "only allowed with stream", "stream_options"),
    ("user without content", "POST", CHAT, _chat(messages=[{"role": "user", "content": None}]), {}, 400, "needs content", None),
    ("audio part", "POST", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), {}, 400, "input_audio", "content"),
    ("tool role", "POST", CHAT, _chat(messages=[{"role": "tool", "content": "x"}]), {}, 400, "role", None),
    ("alias version 1e23", "PUT", "/v1/admin/adapters/math/aliases/zz", b'{"version": 1e23}', {}, 400, "version", "version"),
    ("example id 1e23", "DELETE", "/v1/admin/routes/math/examples?id=1e23", None, {}, 400, "", None),
    ("example id huge", "DELETE", "/v1/admin/routes/math/examples?id=99999999999999999999", None, {}, 400, "", None),
    ("body over the limit", "POST", CHAT, b"x" * (4 * 1024 * 1024 + 1), {}, 413, "limit", None),
]  # fmt: skip
NEUTRAL = _chat(tools=[], tool_choice="none", frequency_penalty=0, presence_penalty=0.0,
                response_format={"type": "text"}, logit_bias={}, user="u", parallel_tool_calls=True,
                use_beam_search=False, best_of=1, bad_words=[], skip_special_tokens=True,
                include_stop_str_in_output=False, top_k=-1, min_p=0, repetition_penalty=1,
                stop_token_ids=[], request_id="r-1", add_generation_prompt=True)  # fmt: skip


def _send(
    http: TestClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if isinstance(body, bytes):
        return http.request(
            method, path, content=body, headers={"content-type": "application/json", **headers}
        )
    return http.request(method, path, json=body, headers=headers)  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_requests_are_refused_in_openai_shape(
    http: TestClient, case: tuple[str, str, str, Any, dict[str, str], int, str, str | None]
) -> None:
    """Items 6, 7, 10 and 3: never a 500, never FastAPI's own `{"detail": …}`."""
    _, method, path, body, headers, status, text, param = case
    answer = _send(http, method, path, body, headers)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert text in error["message"]
    if param is not None:
        assert error["param"] == param
    assert "detail" not in answer.json()


def test_neutral_values_of_unsupported_fields_are_accepted(http: TestClient) -> None:
    assert http.post(CHAT, json=NEUTRAL).status_code == 200


def test_odd_sampling_settings_in_one_batch_fail_no_request(http: TestClient) -> None:
    """Item 1: seeds 1 and none, temperature 1e-300, a seed of 2**64-1, all at once."""
    bodies = [_chat(max_tokens=8) for _ in range(4)] + [
        _chat(max_tokens=8, seed=1, temperature=1.0),
        _chat(max_tokens=8, temperature=1.0),
        _chat(max_tokens=8, temperature=1e-300),
        _chat(max_tokens=8, seed=2**64 - 1, temperature=0.5),
    ]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        answers = list(pool.map(lambda b: http.post(CHAT, json=b), bodies * 2))
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
    texts = [a.json()["choices"][0]["message"]["content"] for a in answers]
    assert texts[4] == texts[12]  # seeded: the same text, whatever it was batched with
    assert texts[0] == texts[6] == texts[14]  # greedy, and a vanishing temperature is greedy


def test_logprobs_in_openai_shape(http: TestClient) -> None:
    """Item 10: logprobs are implemented (chat and completions), not silently dropped."""
    chat = http.post(CHAT, json=_chat(max_tokens=4, logprobs=True, top_logprobs=3)).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == chat["usage"]["completion_tokens"]
    for step in content:
        assert step["logprob"] <= 0 and len(step["top_logprobs"]) == 3
        top = [t["logprob"] for t in step["top_logprobs"]]
        assert top == sorted(top, reverse=True) and step["logprob"] == pytest.approx(
            top[0], abs=1e-3
        )
    text = "".join(step["token"] for step in content)
    assert text == chat["choices"][0]["message"]["content"]
    completion = http.post("/v1/completions", json={"model": "base", "prompt": "The sky is", "max_tokens": 3, "logprobs": 2, "temperature": 0}).json()  # fmt: skip
    logprobs = completion["choices"][0]["logprobs"]
    assert (
        len(logprobs["tokens"])
        == len(logprobs["token_logprobs"])
        == len(logprobs["top_logprobs"])
        == 3
    )
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0


def test_a_large_body_is_refused_quickly_and_does_not_stall_others(http: TestClient) -> None:
    """Item 3: a 20 MB body took 48 s to refuse, grew the server by 5 GB, stalled others."""
    big = (
        b'{"model": "base", "messages": [{"role": "user", "content": "'
        + b"a" * (20 << 20)
        + b'"}]}'
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        refused = pool.submit(_send, http, "POST", CHAT, big, {})
        small = pool.submit(http.post, CHAT, json=_chat())
        assert small.result().status_code == 200
        assert refused.result().status_code == 413


class Spy:
    """Around the real engine: what each submitted request made, and whether it was
    cancelled (the other side of the seam is the engine, left as it is)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.made: list[int] = []
        self.cancelled: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def submit(self, request: GenerationRequest, on_token: Any = None) -> Any:
        index = len(self.made)
        self.made.append(0)

        def counted(token: int) -> None:
            self.made[index] += 1
            if on_token is not None:
                on_token(token)

        try:
            return await self.engine.submit(request, counted)
        except asyncio.CancelledError:
            self.cancelled.append(True)
            raise


@pytest.fixture
def live(world: World, engine: str) -> Iterator[tuple[str, Spy]]:
    settings = ServerSettings(home=world.home, base=str(world.base.path), engine=engine, max_lora_rank=16, max_loras=4)  # fmt: skip
    service = build_service(settings)
    spy = Spy(service.engine)
    service.engine = spy  # type: ignore[assignment]
    with serve_in_thread(create_app(settings, service=service)) as root:
        url = f"{root}/v1"
        yield url, spy


def _wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_clients_that_leave_stop_their_generation(live: tuple[str, Spy]) -> None:
    """Item 2: 64 streaming clients closing after two chunks kept the server busy minutes."""
    url, spy = live
    body = {"model": "base", "messages": [{"role": "user", "content": "Write a long story about the sea."}],
            "max_tokens": 200, "temperature": 0, "stream": True}  # fmt: skip

    def leave_after_two_chunks() -> None:
        with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=120) as answer:
            lines = (line for line in answer.iter_lines() if line.startswith("data:"))
            next(lines), next(lines), next(lines)  # the role chunk, then two of text

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: leave_after_two_chunks(), range(8)))
    _wait_for(lambda: len(spy.cancelled) == 8)
    assert max(spy.made) < 40, spy.made  # stopped within steps of leaving, not at 200

    # A client that gives up waiting on a non-streaming answer is cancelled too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/chat/completions", json={**body, "stream": False}, timeout=1.0)
    _wait_for(lambda: len(spy.cancelled) == 9)
    answer = httpx.post(f"{url}/chat/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=60)  # fmt: skip
    assert answer.status_code == 200


@pytest.mark.vllm
def test_vllm_verifies_an_adapter_it_may_have_to_reload(world: World) -> None:
    """Item 5 on vLLM: the files are checked again when vLLM may no longer hold them."""
    from switchboard_lora.serving.engines.vllm_engine import VLLMEngine, VLLMOptions

    engine = VLLMEngine(world.base.path, VLLMOptions(max_loras=1, max_cpu_loras=1))
    calls = {"a": 0, "b": 0}

    def spec(name: str) -> AdapterSpec:
        def checkout() -> Path:
            calls[name] += 1
            return world.home

        return AdapterSpec(f"{name}-v1", checkout, "lora")

    a, b = spec("a"), spec("b")
    for adapter in (a, a, b, a):
        asyncio.run(engine._lora(GenerationRequest("x", adapter)))
    assert calls == {"a": 2, "b": 1}


@pytest.fixture
def keyed(world: World, tmp_path: Path) -> Iterator[tuple[TestClient, Registry]]:
    settings = ServerSettings(
        home=world.home, base=str(world.base.path), engine="hf", api_keys=["client"],
        admin_keys=["admin"], mix_allow=["sql"], max_mixes=2, requests_per_minute=30,
        feedback_per_minute=2,
    )  # fmt: skip
    with TestClient(create_app(settings)) as http:
        yield http, world.registry


def _mix(*parts: tuple[str, float]) -> dict[str, Any]:
    return _chat(switchboard={"mix": [{"ref": r, "weight": w} for r, w in parts]})


def test_client_mixes_are_allowed_quantised_and_bounded(keyed: tuple[TestClient, Registry]) -> None:
    """Item 9: five requests with weights 0.3001…0.3005 published five mixes (+97 MB each)."""
    http, registry = keyed
    client, admin = {"Authorization": "Bearer client"}, {"Authorization": "Bearer admin"}
    refused = http.post(CHAT, json=_mix(("math", 0.5), ("sql", 0.5)), headers=client)
    assert refused.status_code == 403 and "math" in refused.json()["error"]["message"]
    served = set()
    for weight in (0.3001, 0.3002, 0.3003, 0.3004, 0.3005):
        answer = http.post(CHAT, json=_mix(("math", weight), ("sql", 0.7)), headers=admin)
        assert answer.status_code == 200, answer.text
        served.add(answer.json()["switchboard"]["served"]["ref"])
    assert len(served) == 1  # one mix: the weights are the same to the step
    for weight in (0.1, 0.2, 0.4):
        assert (
            http.post(CHAT, json=_mix(("math", weight), ("sql", 0.5)), headers=admin).status_code
            == 200
        )
    mixes = [a for a in registry.list_adapters() if a.name.startswith("mix-")]
    assert len(mixes) == 2  # max_mixes: the least recently used went
    assert mixes[0].versions == mixes[1].versions == 1


def test_rate_limits_per_key_and_odd_keys(keyed: tuple[TestClient, Registry]) -> None:
    http, _ = keyed
    odd = http.post(
        CHAT, json=_chat(), headers={"Authorization": "Bearer \u00e9".encode("latin-1")}
    )  # type: ignore[dict-item]
    assert odd.status_code == 401  # item 6: a non-ASCII key was a 500
    client = {"Authorization": "Bearer client"}
    feedback = [http.post("/v1/feedback", json={"id": "x", "thumbs": "up"}, headers=client) for _ in range(2)]  # fmt: skip
    assert [f.status_code for f in feedback] == [404, 404]
    # Counted before the body is read: junk counts too, and is refused unread past the limit.
    limited = http.post("/v1/feedback", content=b"{not json", headers={**client, "content-type": "application/json"})  # fmt: skip
    assert limited.status_code == 429 and "rate limit" in limited.json()["error"]["message"]
    assert int(limited.headers["retry-after"]) >= 1
    other = http.post("/v1/feedback", json={"id": "x", "thumbs": "up"}, headers={"Authorization": "Bearer admin"})  # fmt: skip
    assert other.status_code == 404  # another key has its own budget
    made_up = [http.post("/v1/feedback", json={}, headers={"Authorization": f"Bearer made-up-{i}"}) for i in range(3)]  # fmt: skip
    assert [m.status_code for m in made_up] == [401, 401, 429]  # keys it does not know: one budget


def test_the_api_docs_are_behind_the_keys_unless_opened(
    keyed: tuple[TestClient, Registry], world: World
) -> None:
    """Issue 34, item 23: with keys configured, /docs, /redoc and /openapi.json answered 200
    to anyone (the schema names every admin route). They need a key now; `open_docs` opens
    them again, and a server without keys keeps them open."""
    http, _ = keyed
    pages = ("/docs", "/redoc", "/openapi.json")
    for page in pages:
        assert http.get(page).status_code == 401, page
        assert http.get(page, headers={"Authorization": "Bearer client"}).status_code == 200
    assert (
        "/v1/admin/adapters/{name}/aliases/{alias}"
        in http.get("/openapi.json", headers={"Authorization": "Bearer admin"}).json()["paths"]
    )
    base = {"home": world.home, "base": str(world.base.path)}
    opened = TestClient(create_app(ServerSettings(**base, api_keys=["k"], open_docs=True)))
    unkeyed = TestClient(create_app(ServerSettings(**base)))  # neither starts an engine
    for page in pages:
        assert opened.get(page).status_code == unkeyed.get(page).status_code == 200, page
