"""Issue 33 item 2: every field of vLLM's completions and chat requests (read from vLLM's own
request models, so a field vLLM adds fails here until it is classified) is served, refused by
name when it asks for something, or one of the few that change nothing an answer holds (ids,
a cache salt); none is silently ignored. On both engines."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from switchboard_lora.serving.http.schemas import (
    IGNORED,
    NEUTRAL,
    ChatCompletionRequest,
    CompletionRequest,
)

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Say hi."}]

# A request that asks for something of each field served (merged into a small request).
SERVED: dict[str, dict[str, Any]] = {
    "model": {"model": "base"},
    "prompt": {"prompt": ["Hi", "Bye"]},
    "messages": {"messages": HI},
    "echo": {"echo": True},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "presence_penalty": {"presence_penalty": 0.5},
    "repetition_penalty": {"repetition_penalty": 1.2},
    "logit_bias": {"logit_bias": {"28": 5.0}},
    "logprobs": {"logprobs": 2},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "max_tokens": {"max_tokens": 2},
    "max_completion_tokens": {"max_completion_tokens": 2},
    "n": {"n": 2, "seed": 1, "temperature": 1.0},
    "seed": {"seed": 3, "temperature": 1.0},
    "stop": {"stop": ["\n"]},
    "stream": {"stream": True},
    "stream_options": {"stream": True, "stream_options": {"include_usage": True}},
    "temperature": {"temperature": 0.7},
    "top_p": {"top_p": 0.9, "temperature": 1.0},
    "top_k": {"top_k": 5, "temperature": 1.0},
    "min_p": {"min_p": 0.1, "temperature": 1.0},
    "min_tokens": {"min_tokens": 2},
    "ignore_eos": {"ignore_eos": True},
    "stop_token_ids": {"stop_token_ids": [13]},
    "allowed_token_ids": {"allowed_token_ids": [28, 29, 30]},
    "prompt_logprobs": {"prompt_logprobs": 1},
    "response_format": {"response_format": {"type": "json_object"}},
    "structured_outputs": {"structured_outputs": {"regex": "[a-z]{1,3}"}},
    "return_token_ids": {"return_token_ids": True},
    "return_tokens_as_token_ids": {"logprobs": 1, "return_tokens_as_token_ids": True},
}
SERVED_IN_CHAT = {"logprobs": {"logprobs": True}}  # where chat's type differs
# Asked-for values of the fields refused: anything but their neutral values.
ASKING: list[Any] = [True, 2, "x", {"k": 1}, ["x"]]
# What an engine declines, by field (a 400 naming it, on that engine only).
DECLINED = {("vllm", "prompt_logprobs")}


def _vllm_fields(chat: bool) -> set[str]:
    protocol = "chat_completion" if chat else "completion"
    module = pytest.importorskip(f"vllm.entrypoints.openai.{protocol}.protocol")
    model = module.ChatCompletionRequest if chat else module.CompletionRequest
    return set(model.model_fields)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_every_vllm_field_is_served_refused_or_harmless(
    http: TestClient, engine: str, chat: bool
) -> None:
    ours = set((ChatCompletionRequest if chat else CompletionRequest).model_fields)
    path, plain = (CHAT, {"messages": HI}) if chat else (COMPLETIONS, {"prompt": "Hi"})
    plain = {"model": "base", "max_tokens": 2, "temperature": 0, **plain}
    unclassified = []
    for name in sorted(_vllm_fields(chat)):
        if name in ours:
            if name not in SERVED:
                unclassified.append(f"{name} (served: give it a request in SERVED)")
                continue
            body = {**plain, **((chat and SERVED_IN_CHAT.get(name)) or SERVED[name])}
            if chat and name == "echo":
                continue  # chat's echo is refused by name, below
            answer = http.post(path, json=body)
            if (engine, name) in DECLINED:
                assert answer.status_code == 400 and name in answer.text, answer.text
            else:
                assert answer.status_code == 200, f"{name}: {answer.text}"
        elif name in NEUTRAL:
            value = next(v for v in ASKING if v not in NEUTRAL[name])
            answer = http.post(path, json={**plain, name: value})
            assert answer.status_code == 400, f"{name}: {answer.text}"
            assert answer.json()["error"]["param"] == name
        elif name in IGNORED:
            assert http.post(path, json={**plain, name: "x"}).status_code == 200, name
        else:
            unclassified.append(name)
    assert not unclassified, f"vLLM's fields neither served, refused nor harmless: {unclassified}"
    if chat:
        refused = http.post(path, json={**plain, "echo": True})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "echo"


def test_each_served_field_changes_the_answer_or_its_shape(http: TestClient, engine: str) -> None:
    """What the engine tests show per setting, seen through the HTTP edge."""
    base = {
        "model": "base",
        "prompt": "The capital of France is",
        "max_tokens": 6,
        "temperature": 0,
    }
    plain = http.post(COMPLETIONS, json=base).json()["choices"][0]
    biased = http.post(COMPLETIONS, json={**base, "logit_bias": {"28": 100}}).json()
    assert biased["choices"][0]["text"] != plain["text"]
    two = http.post(COMPLETIONS, json={**base, "prompt": [base["prompt"]] * 2, "n": 2}).json()
    assert [c["index"] for c in two["choices"]] == [0, 1, 2, 3]
    assert {c["text"] for c in two["choices"]} == {plain["text"]}
    echo = {**base, "echo": True, "max_tokens": 0}
    assert http.post(COMPLETIONS, json=echo).json()["choices"][0]["text"] == base["prompt"]
    scored = http.post(COMPLETIONS, json={**echo, "logprobs": 0})
    if engine == "vllm":  # declined, with the reason (docs/compatibility.md)
        assert scored.status_code == 400 and "prompt_logprobs" in scored.text
        return
    echoed = scored.json()["choices"][0]
    assert echoed["text"] == base["prompt"]
    assert echoed["logprobs"]["token_logprobs"][0] is None
    assert len(echoed["logprobs"]["tokens"]) == len(echoed["logprobs"]["token_logprobs"])
    as_ids = http.post(
        COMPLETIONS, json={**base, "logprobs": 1, "return_tokens_as_token_ids": True}
    ).json()["choices"][0]["logprobs"]["tokens"]
    assert all(token.startswith("token_id:") for token in as_ids)
