"""Serving benchmark: engines, mixtures and the HTTP server, measured side by side.

    python -m bench.serve [--part all|throughput|mixture|http] [--engine both|hf|vllm]
                          [--prompts 32] [--tokens 64] [--load-seconds 60] [--json]

- throughput (per engine, through the engine interface the server uses, all requests
  submitted at once): output tokens/s for N prompts on the base alone vs the same prompts
  spread over 8 distinct LoRA adapters (rank 16, all seven projections). Targets (issue 5):
  mixed / base >= 0.8 on CPU. transformers engine only: the 8-adapter load as one mixed
  batch vs one adapter at a time (8 loads in a row), target >= 3. Beside them, on the base:
  every other row guided by a JSON schema (structured output mixed with free text; target
  >= 0.85 of base, issue 33), and every row sampled with vLLM's settings (seeded, top-k,
  top-p, min-p, repetition/presence/frequency penalties, a logit bias).
- mixture: build time of a 3-adapter mix (rank 16 each) on the real base; a cache hit.
- http (one engine: the first of --engine; a real uvicorn server on a local port, the
  official openai client):
  routing overhead: p50 latency of model=auto vs naming the adapter it routes to (target
  <= 5 % more); hot add: publish a version while serving -> first answer from it, against
  the same request once warm (target: <= 2 s more); load: 64 concurrent streaming clients
  for --load-seconds: errors, latency and time to first token p50/p99, tokens/s.
Real base (SmolLM2-135M-Instruct), fp32 unless --dtype, greedy; medians of --repeats runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import HomeOption, default_base, run_benchmark
from support.paths import DATA
from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry import BaseModelInfo, ManifestDraft, Registry, RegistrySettings
from switchboard_lora.registry.experiments.stats import percentile
from switchboard_lora.serving.build import build_engine
from switchboard_lora.serving.engines.grammar import Guide
from switchboard_lora.serving.engines.interface import (
    AdapterSpec,
    Engine,
    GenerationRequest,
    SamplingParams,
)
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.http.threaded import serve_in_thread
from switchboard_lora.serving.mixture import build_mixture
from switchboard_lora.serving.settings import EngineSettings, ServerSettings
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.loop import routing_sample
from switchboard_lora.trainer.synthetic import random_adapter

# What the structured rows answer: a record as an extraction workload asks for one.
RECORD = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "summary": {"type": "string"},
        "difficulty": {"type": "integer", "minimum": 1, "maximum": 5},
        "keywords": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["topic", "summary", "difficulty", "keywords"],
}


def make_lora(base: BaseModelInfo, out: Path, seed: int) -> Path:
    """Rank 16 on all seven projections; a small delta keeps answers fluent, lengths alike."""
    return random_adapter(base.path, out, seed=seed, rank=16, scale=0.02)


def requests_of(domain: str, split: str, count: int) -> list[str]:
    rows = load_jsonl(DATA / domain / f"{split}.jsonl").examples
    return [r[:400] for r in routing_sample(rows, count, seed=0)]


def prompts(engine: Engine, count: int) -> list[str]:
    texts = [t for domain in DOMAINS for t in requests_of(domain, "eval", count)][:count]
    return [engine.tokens.render_chat([{"role": "user", "content": t}]) for t in texts]


# ---- engines ------------------------------------------------------------------------------


async def _timed(engine: Engine, loads: list[list[GenerationRequest]]) -> float:
    """Output tokens/s over loads run one after another, each submitted all at once."""
    start = time.perf_counter()
    produced = 0
    for load in loads:
        done = await asyncio.gather(*(engine.submit(r) for r in load))
        produced += sum(len(g.token_ids) for g in done)
    return produced / (time.perf_counter() - start)


async def engine_throughput(
    engine: Engine, loras: list[AdapterSpec], prompt_count: int, tokens: int, repeats: int
) -> dict[str, Any]:
    await engine.start()
    try:
        texts = prompts(engine, prompt_count)
        params = SamplingParams(max_tokens=tokens)
        base = [GenerationRequest(t, None, params) for t in texts]
        mixed = [GenerationRequest(t, loras[i % len(loras)], params) for i, t in enumerate(texts)]
        guided = SamplingParams(max_tokens=tokens, guide=Guide("json", json.dumps(RECORD)))
        structured = [
            GenerationRequest(t, None, guided if i % 2 else params) for i, t in enumerate(texts)
        ]
        sampled = [
            GenerationRequest(t, None, SamplingParams(
                max_tokens=tokens, temperature=0.8, seed=i, top_k=40, top_p=0.95, min_p=0.02,
                repetition_penalty=1.1, presence_penalty=0.3, frequency_penalty=0.3,
                logit_bias=((28, 1.0),),
            ))
            for i, t in enumerate(texts)
        ]  # fmt: skip
        loads = {"base": [base], "mixed": [mixed], "structured": [structured], "sampled": [sampled]}
        if engine.name == "hf":  # vLLM schedules continuously: "one at a time" is moot there
            loads["one_at_a_time"] = [[r for r in mixed if r.adapter == s] for s in loras]
        await _timed(engine, [mixed[: len(loras)]])  # load every adapter, outside the timings
        runs: dict[str, list[float]] = {label: [] for label in loads}
        for _ in range(repeats):
            for label, load in loads.items():
                runs[label].append(await _timed(engine, load))
    finally:
        await engine.stop()
    median = {k: statistics.median(v) for k, v in runs.items()}
    result: dict[str, Any] = {
        "prompts": len(texts),
        "max_tokens": tokens,
        "adapters": len(loras),
        "tokens_per_s": median,
        "mixed_vs_base": median["mixed"] / median["base"],
        "structured_vs_base": median["structured"] / median["base"],
        "sampled_vs_base": median["sampled"] / median["base"],
    }
    if "one_at_a_time" in median:
        result["mixed_vs_one_at_a_time"] = median["mixed"] / median["one_at_a_time"]
    return result


def mixture(base: BaseModelInfo, loras: list[AdapterSpec], home: Path) -> dict[str, Any]:
    registry = Registry(RegistrySettings(home=home).registry_url, home)
    for i, spec in enumerate(loras[:3]):
        registry.publish(spec.checkout(), f"part-{i}", base)
    builds, hits = [], []
    for weights in ((0.5, 0.3, 0.2), (0.2, 0.3, 0.5), (0.4, 0.4, 0.2)):
        parts = [(f"part-{i}", w) for i, w in enumerate(weights)]
        start = time.perf_counter()
        built = build_mixture(registry, parts, base)
        builds.append(time.perf_counter() - start)
        assert built.built
        for _ in range(10):
            start = time.perf_counter()
            assert not build_mixture(registry, parts, base).built
            hits.append(time.perf_counter() - start)
    registry.close()
    return {
        "build_s_median": statistics.median(builds),
        "cache_hit_ms_median": statistics.median(hits) * 1e3,
    }


# ---- the HTTP server ----------------------------------------------------------------------


async def _ask(client: Any, model: str, text: str, tokens: int) -> tuple[float, Any]:
    start = time.perf_counter()
    answer = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=tokens,
        temperature=0,
    )
    return time.perf_counter() - start, answer


async def routing_overhead(client: Any, texts: list[str], adapter: str) -> dict[str, Any]:
    """Same requests, interleaved: auto (routed to `adapter`) and `adapter` named."""
    routed = []
    for text in texts:
        _, answer = await _ask(client, "auto", text, 1)
        if answer.model_extra["switchboard"]["served"]["ref"].split(":")[0] == adapter:
            routed.append(text)
    times: dict[str, list[float]] = {"auto": [], "named": []}
    for text in routed * 2:
        for label, model in (("auto", "auto"), ("named", adapter)):
            seconds, _ = await _ask(client, model, text, 16)
            times[label].append(seconds)
    auto, named = statistics.median(times["auto"]), statistics.median(times["named"])
    return {
        "requests": len(times["auto"]),
        "auto_p50_s": auto,
        "named_p50_s": named,
        "overhead": auto / named - 1,
    }


async def hot_add(client: Any, registry: Registry, base: BaseModelInfo, source: Path) -> Any:
    text = "Name three primary colours."
    start = time.perf_counter()
    version = await asyncio.to_thread(registry.publish, source, "fresh", base)
    published = time.perf_counter() - start
    first, answer = await _ask(client, "fresh", text, 16)
    assert answer.model_extra["switchboard"]["served"]["ref"] == f"fresh:{version.version}"
    warm = statistics.median([(await _ask(client, "fresh", text, 16))[0] for _ in range(3)])
    return {
        "publish_s": published,
        "first_answer_s": first,
        "warm_answer_s": warm,
        "added_s": published + first - warm,
    }


async def load(client: Any, texts: list[str], seconds: float, clients: int) -> dict[str, Any]:
    models = ["auto", "math", "sql", "science", "base"]
    latencies: list[float] = []
    first_tokens: list[float] = []
    errors: list[str] = []
    produced = 0
    deadline = time.perf_counter() + seconds

    async def user(index: int) -> None:
        nonlocal produced
        rng = random.Random(index)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            first = None
            try:
                stream = await client.chat.completions.create(
                    model=rng.choice(models),
                    messages=[{"role": "user", "content": rng.choice(texts)}],
                    max_tokens=32,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for event in stream:
                    if first is None and event.choices and event.choices[0].delta.content:
                        first = time.perf_counter() - start
                    if event.usage is not None:
                        produced += event.usage.completion_tokens
            except Exception as exc:  # counted and reported: the point of a load test
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append(time.perf_counter() - start)
            if first is not None:
                first_tokens.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p99_s": percentile(latencies, 0.99),
        "first_token_p50_s": percentile(first_tokens, 0.5),
        "first_token_p99_s": percentile(first_tokens, 0.99),
        "tokens_per_s": produced / elapsed,
    }


async def http_parts(
    engine: str, base: BaseModelInfo, loras: list[AdapterSpec], home: Path, options: Any
) -> dict[str, Any]:
    from openai import AsyncOpenAI

    registry = Registry(RegistrySettings(home=home).registry_url, home)
    for spec, domain in zip(loras, ("math", "sql", "science"), strict=False):
        draft = ManifestDraft(routing_examples=requests_of(domain, "train", 40))
        registry.publish(spec.checkout(), domain, base, draft=draft)
    settings = ServerSettings(
        home=home, base=str(base.path), engine=engine, dtype=options["dtype"], max_lora_rank=16
    )
    texts = [t for d in ("math", "sql", "science") for t in requests_of(d, "eval", 10)]
    with serve_in_thread(create_app(settings)) as root:
        url = f"{root}/v1"
        client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        result = {
            "engine": engine,
            "routing": await routing_overhead(client, requests_of("math", "eval", 10), "math"),
            "hot_add": await hot_add(client, registry, base, loras[-1].checkout()),
            "load": await load(client, texts, options["load_seconds"], options["clients"]),
        }
        await client.close()
    registry.close()
    return result


# ---- report -------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    for engine in ("hf", "vllm"):
        if engine not in results:
            continue
        r = results[engine]
        rates = r["tokens_per_s"]
        print(
            f"{engine}: {r['prompts']} prompts x {r['max_tokens']} tokens, {r['adapters']} LoRA "
            f"adapters (rank 16, 7 projections), output tokens/s: base alone {rates['base']:.1f}"
            f" | 8 adapters mixed {rates['mixed']:.1f}"
            + (
                f" | one adapter at a time {rates['one_at_a_time']:.1f}"
                if "one_at_a_time" in rates
                else ""
            )
        )
        line = f"  mixed / base = {r['mixed_vs_base']:.2f} (target >= 0.8)"
        if "mixed_vs_one_at_a_time" in r:
            line += f"; mixed / one at a time = {r['mixed_vs_one_at_a_time']:.2f} (target >= 3)"
        print(line)
        print(
            f"  on the base: half the rows JSON-guided {rates['structured']:.1f} tokens/s, "
            f"{r['structured_vs_base']:.2f} of base (target >= 0.85); every row sampled with "
            f"vLLM's settings {rates['sampled']:.1f}, {r['sampled_vs_base']:.2f} of base"
        )
    if "mixture" in results:
        mix = results["mixture"]
        print(
            f"mixture of 3 rank-16 LoRAs: build {mix['build_s_median']:.2f} s, "
            f"cache hit {mix['cache_hit_ms_median']:.2f} ms"
        )
    if "http" in results:
        h = results["http"]
        routing, hot, run = h["routing"], h["hot_add"], h["load"]
        print(f"HTTP server, {h['engine']} engine:")
        print(
            f"  routing overhead: auto p50 {routing['auto_p50_s'] * 1e3:.0f} ms vs named "
            f"{routing['named_p50_s'] * 1e3:.0f} ms over {routing['requests']} requests each: "
            f"{routing['overhead'] * 100:+.1f} % (target <= 5 %)"
        )
        print(
            f"  hot add: publish {hot['publish_s']:.2f} s, first answer {hot['first_answer_s']:.2f}"
            f" s, warm answer {hot['warm_answer_s']:.2f} s: {hot['added_s']:.2f} s added "
            "(target <= 2 s)"
        )
        print(
            f"  load: {run['clients']} streaming clients for {run['seconds']:.0f} s: "
            f"{run['requests']} requests, {run['errors']} errors, latency p50 "
            f"{run['latency_p50_s']:.2f} s p99 {run['latency_p99_s']:.2f} s, first token p50 "
            f"{run['first_token_p50_s']:.2f} s p99 {run['first_token_p99_s']:.2f} s, "
            f"{run['tokens_per_s']:.1f} tokens/s"
        )


def main(
    part: Annotated[str, typer.Option(help="all, throughput, mixture or http")] = "all",
    engine: Annotated[str, typer.Option(help="both, hf or vllm")] = "both",
    prompt_count: Annotated[int, typer.Option("--prompts")] = 32,
    tokens: Annotated[int, typer.Option()] = 64,
    repeats: Annotated[int, typer.Option()] = 3,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16")] = "float32",
    load_seconds: Annotated[float, typer.Option()] = 60.0,
    clients: Annotated[int, typer.Option()] = 64,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    base = default_base(home)
    engines = ["hf", "vllm"] if engine == "both" else [engine]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loras = [
            AdapterSpec.local(f"bench-{i}-v1", make_lora(base, Path(tmp) / f"lora-{i}", i), "lora")
            for i in range(8)
        ]
        if part in ("all", "throughput"):
            for name in engines:
                engine_settings = EngineSettings(engine=name, dtype=dtype, max_lora_rank=16)
                built = build_engine(engine_settings, base.path)
                results[name] = asyncio.run(
                    engine_throughput(built, loras, prompt_count, tokens, repeats)
                )
        if part in ("all", "mixture"):
            results["mixture"] = mixture(base, loras, Path(tmp) / "mix-home")
        if part in ("all", "http"):
            options = {"dtype": dtype, "load_seconds": load_seconds, "clients": clients}
            results["http"] = asyncio.run(
                http_parts(engines[0], base, loras, Path(tmp) / "http-home", options)
            )
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    run_benchmark(main)
