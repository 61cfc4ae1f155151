"""Serving benchmark (so far: the transformers+PEFT engine and mixtures; the HTTP server and
vLLM parts come with the server).

    python bench/serve.py [--part all|throughput|batching|mixture] [--prompts 32]
                          [--tokens 64] [--json]

- throughput: output tokens/s for one batch of N prompts on the base alone, and the same
  prompts spread over 8 distinct LoRA adapters (rank 16, all seven projections) in one
  mixed batch. Target (issue 5): ratio >= 0.8 on CPU.
- batching: the same 8-adapter load served as one mixed batch vs one adapter at a time
  (8 batches in a row). Target: ratio >= 3.
- mixture: build time of a 3-adapter mix (rank 16 each) on the real base; a cache hit.
Real base (SmolLM2-135M-Instruct, fp32), greedy decoding; medians of --repeats runs.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

# Run as a script, this file's folder comes first on sys.path: keep the project's packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from registry import BaseModelInfo, BaseModels, Registry, Settings  # noqa: E402
from serving.engine import AdapterSpec, GenerationRequest, SamplingParams  # noqa: E402
from serving.hf_engine import HFEngine  # noqa: E402
from serving.mixture import build_mixture  # noqa: E402
from trainer.data import load_jsonl  # noqa: E402
from trainer.demo_data import DOMAINS  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_loras(base: BaseModelInfo, count: int, out: Path) -> list[AdapterSpec]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    specs = []
    for i in range(count):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base.path)
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules=PROJECTIONS, init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # a small delta: answers stay fluent, lengths comparable
                param.data *= 0.02
        path = out / f"lora-{i}"
        peft_model.save_pretrained(path)
        specs.append(AdapterSpec(f"bench-{i}-v1", path, "lora"))
    return specs


def prompts(engine: HFEngine, count: int) -> list[str]:
    requests = [
        example.request
        for domain in DOMAINS
        for example in load_jsonl(DATA / domain / "eval.jsonl").examples[:count]
    ]
    return [
        engine.tokens.render_chat([{"role": "user", "content": r[:400]}]) for r in requests[:count]
    ]


def _timed(engine: HFEngine, batches: list[list[GenerationRequest]]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = sum(len(g.token_ids) for batch in batches for g in engine.generate(batch))
    return time.perf_counter() - start, tokens


def throughput_and_batching(
    engine: HFEngine, loras: list[AdapterSpec], texts: list[str], tokens: int, repeats: int
) -> dict[str, Any]:
    params = SamplingParams(max_tokens=tokens)
    base = [GenerationRequest(t, None, params) for t in texts]
    mixed = [GenerationRequest(t, loras[i % len(loras)], params) for i, t in enumerate(texts)]
    by_adapter = [[r for r in mixed if r.adapter == spec] for spec in loras]
    engine.generate(mixed[: len(loras)])  # load every adapter once, outside the timings
    runs: dict[str, list[float]] = {"base": [], "mixed": [], "one_at_a_time": []}
    for _ in range(repeats):
        for label, batches in (
            ("base", [base]),
            ("mixed", [mixed]),
            ("one_at_a_time", by_adapter),
        ):
            seconds, produced = _timed(engine, batches)
            runs[label].append(produced / seconds)
    median = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "prompts": len(texts),
        "max_tokens": tokens,
        "adapters": len(loras),
        "tokens_per_s": median,
        "mixed_vs_base": median["mixed"] / median["base"],
        "mixed_vs_one_at_a_time": median["mixed"] / median["one_at_a_time"],
    }


def mixture(base: BaseModelInfo, loras: list[AdapterSpec], home: Path) -> dict[str, Any]:
    registry = Registry(Settings(home=home).registry_url, home)
    for i, spec in enumerate(loras[:3]):
        registry.publish(spec.path, f"part-{i}", base)
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


def main(
    part: Annotated[str, typer.Option(help="all, throughput, batching or mixture")] = "all",
    prompt_count: Annotated[int, typer.Option("--prompts")] = 32,
    tokens: Annotated[int, typer.Option()] = 64,
    repeats: Annotated[int, typer.Option()] = 3,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    settings = Settings()
    base, _ = BaseModels(settings.home_dir / "bases").pull(settings.base)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loras = make_loras(base, 8, Path(tmp))
        if part in ("all", "throughput", "batching"):
            engine = HFEngine(base.path)
            texts = prompts(engine, prompt_count)
            results["hf"] = throughput_and_batching(engine, loras, texts, tokens, repeats)
        if part in ("all", "mixture"):
            results["mixture"] = mixture(base, loras, Path(tmp) / "home")
    if as_json:
        print(json.dumps(results, indent=2))
        return
    if "hf" in results:
        hf = results["hf"]
        rates = hf["tokens_per_s"]
        print(
            f"transformers+PEFT, {hf['prompts']} prompts x {hf['max_tokens']} tokens, "
            f"{hf['adapters']} LoRA adapters (rank 16, 7 projections), output tokens/s:"
        )
        print(
            f"  base alone {rates['base']:.1f} | 8 adapters, one mixed batch {rates['mixed']:.1f}"
            f" | one adapter at a time {rates['one_at_a_time']:.1f}"
        )
        print(
            f"  mixed / base = {hf['mixed_vs_base']:.2f} (target >= 0.8); "
            f"mixed / one at a time = {hf['mixed_vs_one_at_a_time']:.2f} (target >= 3)"
        )
    if "mixture" in results:
        mix = results["mixture"]
        print(
            f"mixture of 3 rank-16 LoRAs: build {mix['build_s_median']:.2f} s, "
            f"cache hit {mix['cache_hit_ms_median']:.2f} ms"
        )


if __name__ == "__main__":
    typer.run(main)
