"""Issue 33 item 4: vLLM's runtime LoRA API over the registry, with vLLM's request and
response shapes: load publishes a directory (or points to a version), unload takes a name out
of serving and keeps its history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_world import World, make_lora

from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.settings import ServerSettings

pytestmark = pytest.mark.slow

LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@pytest.fixture(scope="module")
def http(fresh_world: World) -> Iterator[TestClient]:
    settings = ServerSettings(home=fresh_world.home, base=str(fresh_world.base.path), engine="hf")
    with TestClient(create_app(settings)) as client:
        yield client


def served_ref(http: TestClient, model: str) -> str:
    body = {"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    answer = http.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    ref: str = answer.json()["switchboard"]["served"]["ref"]
    return ref


def test_load_point_and_unload_as_vllm_does(
    http: TestClient, fresh_world: World, tmp_path: Path, foreign_lora_dir: Path
) -> None:
    first = make_lora(fresh_world.base, tmp_path / "v1", seed=41)
    loaded = http.post(LOAD, json={"lora_name": "legal", "lora_path": str(first)})
    assert loaded.status_code == 200, loaded.text
    assert loaded.text.startswith("Success: LoRA adapter 'legal'")
    assert served_ref(http, "legal") == "legal:1"
    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert listed["legal"]["parent"] == "base"

    second = make_lora(fresh_world.base, tmp_path / "v2", seed=42)
    again = http.post(LOAD, json={"lora_name": "legal", "lora_path": str(second)})
    assert again.status_code == 400 and "already been loaded" in again.text  # as vLLM answers
    replaced = {"lora_name": "legal", "lora_path": str(second), "load_inplace": True}
    assert http.post(LOAD, json=replaced).status_code == 200
    assert served_ref(http, "legal") == "legal:2"
    back = {"lora_name": "legal", "lora_path": "legal:1", "load_inplace": True}
    assert http.post(LOAD, json=back).status_code == 200
    assert served_ref(http, "legal") == "legal:1"

    nowhere = http.post(LOAD, json={"lora_name": "tax", "lora_path": str(tmp_path / "nope")})
    assert nowhere.status_code == 400 and "neither an adapter directory" in nowhere.text
    foreign = http.post(LOAD, json={"lora_name": "tax", "lora_path": str(foreign_lora_dir)})
    assert foreign.status_code == 400 and "base" in foreign.text

    unloaded = http.post(UNLOAD, json={"lora_name": "legal"})
    assert unloaded.status_code == 200 and "removed successfully" in unloaded.text
    gone = http.post("/v1/completions", json={"model": "legal", "prompt": "Hi", "max_tokens": 1})
    assert gone.status_code == 404
    history = fresh_world.registry.list_versions("legal", include_deleted=True)
    assert [v.version for v in history] == [1, 2]
    assert http.post(UNLOAD, json={"lora_name": "legal"}).status_code == 404
