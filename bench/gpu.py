"""Serving at a real model's size, no download: Switchboard's engine beside its peers.

    python -m bench.gpu [--shape llama-3-8b|smollm2-135m] [--concurrency 32,128]
                        [--tokens 128] [--prompt-tokens 128] [--prompts N]
                        [--device auto] [--bandwidth-gbs B] [--peak-tflops F] [--json]

A base of the shape's architecture with random weights (decode speed does not depend on
the values), in bf16 on the device, with a word-level tokenizer of its vocabulary (prompts
are random token ids), and 8 random rank-16 LoRA adapters on all seven projections. Every
request generates exactly `--tokens` tokens (end of sequence is ignored). At each
concurrency, all in one run, side by side:
- switchboard-hf: the transformers engine through the interface the server drives, base
  alone and the same requests spread over the 8 adapters;
- peft: PEFT's own mixed-adapter batch (`generate(adapter_names=...)`), what a user would
  otherwise run, on the same model shape and requests (one static batch per wave);
- vllm, where importable: Switchboard's vLLM engine with `load_format="dummy"`;
- limit: tokens/s if each decode step only read the weights (and, mixed, the adapters')
  at the device's memory bandwidth, or did their FLOPs at its peak, whichever is slower.
Each run gives output tokens/s and time to first token p50 (medians over --repeats). With
--json the one JSON document is all that reaches stdout: logs (vLLM's too) go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import run_benchmark
from switchboard_lora.registry.bases import PROJECTIONS
from switchboard_lora.trainer.synthetic import word_tokenizer

log = logging.getLogger("bench.gpu")

ADAPTERS = 8
RANK = 16


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    rope_theta: float = 10000.0
    context: int = 8192

    def config(self) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            intermediate_size=self.intermediate,
            vocab_size=self.vocab,
            tie_word_embeddings=self.tied,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            max_position_embeddings=self.context,
            architectures=["LlamaForCausalLM"],
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each of a layer's seven projections."""
        head_dim = self.hidden // self.heads
        q, kv = self.heads * head_dim, self.kv_heads * head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def weights_read_per_step(self) -> int:
        """Parameters one decode step reads: every layer's and the output head (an untied
        input embedding is looked up, a row a token, not read whole)."""
        per_layer = sum(a * b for a, b in self.projections().values()) + 2 * self.hidden
        return self.layers * per_layer + self.hidden + self.vocab * self.hidden

    def lora_parameters(self) -> int:
        """One rank-`RANK` adapter on all seven projections of every layer."""
        return self.layers * RANK * sum(a + b for a, b in self.projections().values())


SHAPES = {
    # meta-llama/Meta-Llama-3-8B's config.json
    "llama-3-8b": Shape(4096, 32, 32, 8, 14336, 128256, False, rope_theta=500000.0),
    # HuggingFaceTB/SmolLM2-135M-Instruct's (the default base)
    "smollm2-135m": Shape(576, 30, 9, 3, 1536, 49152, True, rope_theta=100000.0),
}

# Memory bandwidth (GB/s) and dense bf16 peak (TFLOPS) by device name, from the makers' data
# sheets; the first entry whose words all appear in torch's name for the device is taken.
DEVICES = [
    (("H200",), 4800, 989),
    (("H100", "PCIe"), 2000, 756),
    (("H100",), 3350, 989),  # SXM (HBM3)
    (("A100", "80GB"), 2039, 312),
    (("A100",), 1555, 312),
    (("L40S",), 864, 362),
]


def device_figures(name: str) -> tuple[float | None, float | None]:
    for words, bandwidth, peak in DEVICES:
        if all(w in name for w in words):
            return float(bandwidth), float(peak)
    return None, None


# ---- the model directory, the adapters, the requests ----------------------------------------


def write_base(shape: Shape, out: Path) -> Path:
    """config.json and a word-level tokenizer ("t17" is id 17) of the shape's vocabulary: all
    any engine reads when its weights are random."""
    shape.config().save_pretrained(out)
    return word_tokenizer(shape.vocab, out)


def write_loras(shape: Shape, base_dir: Path, out: Path, device: Any, dtype: Any) -> list[Path]:
    """`ADAPTERS` PEFT LoRA directories, rank `RANK` on all seven projections, random."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    paths = []
    for n in range(ADAPTERS):
        generator = torch.Generator(device).manual_seed(n)
        tensors = {}
        for layer in range(shape.layers):
            for module, (fan_in, fan_out) in shape.projections().items():
                part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                key = f"base_model.model.model.layers.{layer}.{part}.{module}"
                a = torch.randn(RANK, fan_in, generator=generator, device=device) / fan_in**0.5
                b = torch.randn(fan_out, RANK, generator=generator, device=device) * 0.01
                tensors[f"{key}.lora_A.weight"] = a.to(dtype).cpu()
                tensors[f"{key}.lora_B.weight"] = b.to(dtype).cpu()
        path = out / f"lora-{n}"
        LoraConfig(
            r=RANK,
            lora_alpha=2 * RANK,
            target_modules=list(PROJECTIONS),
            task_type="CAUSAL_LM",
            base_model_name_or_path=str(base_dir),
        ).save_pretrained(str(path))
        save_file(tensors, path / "adapter_model.safetensors")
        paths.append(path)
    return paths


def prompt_texts(shape: Shape, count: int, length: int) -> list[str]:
    """Random token ids as word-level text (id 0, the end of sequence, left out)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, shape.vocab, (count, length), generator=generator)
    return [" ".join(f"t{i}" for i in row) for row in ids.tolist()]


# ---- measuring --------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    tokens: int
    first_tokens: list[float]  # seconds from submission to each request's first token
    per_request: list[int]  # tokens each request made

    def summary(self) -> dict[str, Any]:
        return {
            "tokens_per_s": self.tokens / self.seconds,
            "ttft_p50_s": statistics.median(self.first_tokens),
            "seconds": self.seconds,
            "requests": len(self.per_request),
            "tokens_per_request": sorted(set(self.per_request)),
        }


def median_run(runs: list[Run]) -> dict[str, Any]:
    summaries = [r.summary() for r in runs]
    middle = sorted(summaries, key=lambda s: s["tokens_per_s"])[len(summaries) // 2]
    return middle | {"ttft_p50_s": statistics.median(s["ttft_p50_s"] for s in summaries)}


async def engine_run(engine: Any, requests: list[Any], level: int) -> Run:
    """`requests` through the engine's `submit`, at most `level` in flight."""
    gate = asyncio.Semaphore(level)
    firsts: list[float] = []
    made: list[int] = []
    start = time.perf_counter()

    async def one(request: Any) -> None:
        async with gate:
            sent = time.perf_counter()
            first: list[float] = []

            def on_token(_: int) -> None:
                if not first:
                    first.append(time.perf_counter() - sent)

            generation = await engine.submit(request, on_token)
            firsts.append(first[0] if first else float("nan"))
            made.append(len(generation.token_ids))

    await asyncio.gather(*(one(r) for r in requests))
    return Run(time.perf_counter() - start, sum(made), firsts, made)


async def over_levels(
    system: str,
    plan: dict[str, Any],
    texts: list[str],
    run: Callable[[str, list[str], int], Awaitable[Run]],
) -> dict[str, Any]:
    """`run(label, prompts, level)` for the base and mixed loads at every concurrency level,
    each of `--prompts` requests (default: the level), base and mixed alternating over the
    repeats; their medians and mixed/base."""
    results: dict[str, Any] = {}
    for level in plan["levels"]:
        count = plan["prompts"] or level
        chosen = [texts[i % len(texts)] for i in range(count)]
        runs: dict[str, list[Run]] = {"base": [], "mixed": []}
        for _ in range(plan["repeats"]):
            for label, done in runs.items():
                done.append(await run(label, chosen, level))
        results[str(level)] = _pair({k: median_run(v) for k, v in runs.items()})
        log.info("%s at %d: %s", system, level, _brief(results[str(level)]))
    return results


async def measure_engine(
    engine: Any, loras: list[Path], texts: list[str], plan: dict[str, Any]
) -> dict[str, Any]:
    """Base and mixed runs of one engine at every concurrency level."""
    from switchboard_lora.serving.engines.interface import (
        AdapterSpec,
        GenerationRequest,
        SamplingParams,
    )

    specs = [AdapterSpec.local(f"bench-{i}-v1", p, "lora") for i, p in enumerate(loras)]
    params = SamplingParams(max_tokens=plan["tokens"], ignore_eos=True)
    warm = SamplingParams(max_tokens=2, ignore_eos=True)
    await engine.start()
    try:
        # Every adapter loaded and the kernels warmed, outside the timings.
        await engine_run(engine, [GenerationRequest(texts[0], s, warm) for s in specs], ADAPTERS)
        await engine_run(engine, [GenerationRequest(t, None, warm) for t in texts[:4]], 4)

        async def run(label: str, chosen: list[str], level: int) -> Run:
            requests = [
                GenerationRequest(t, specs[i % ADAPTERS] if label == "mixed" else None, params)
                for i, t in enumerate(chosen)
            ]
            return await engine_run(engine, requests, level)

        return await over_levels(engine.name, plan, texts, run)
    finally:
        await engine.stop()


def measure_peft(
    base_dir: Path, loras: list[Path], texts: list[str], plan: dict[str, Any]
) -> dict[str, Any]:
    """PEFT's mixed-adapter batch: `generate(adapter_names=...)`, a static batch per wave of
    `level` requests, greedy, exactly `tokens` new tokens each."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

    device, dtype = plan["device"], getattr(torch, plan["dtype"])
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with device:
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(base_dir), dtype=dtype
        ).eval()
    names = [f"a{i}" for i in range(ADAPTERS)]
    wrapped: Any = PeftModel.from_pretrained(model, loras[0], adapter_name=names[0])
    for name, path in zip(names[1:], loras[1:], strict=True):
        wrapped.load_adapter(path, adapter_name=name)
    wrapped.to(device).eval()

    class FirstStep(StoppingCriteria):
        """Notes when the first new token exists (all rows of a static batch share it)."""

        def __init__(self) -> None:
            self.at: float | None = None

        def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
            if self.at is None:
                self.at = time.perf_counter()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def wave(batch: list[str], adapters: list[str], tokens: int) -> tuple[float, list[int]]:
        encoded = tokenizer(batch, return_tensors="pt").to(device)
        first = FirstStep()
        start = time.perf_counter()
        with torch.inference_mode():
            out = wrapped.generate(
                **encoded,
                adapter_names=adapters,
                max_new_tokens=tokens,
                min_new_tokens=tokens,  # no end of sequence before `tokens`
                do_sample=False,
                stopping_criteria=[first],
                pad_token_id=tokenizer.pad_token_id,
            )
        made = [out.shape[1] - encoded["input_ids"].shape[1]] * len(batch)
        return (first.at or time.perf_counter()) - start, made

    def run(chosen: list[str], adapters: list[str], level: int) -> Run:
        firsts: list[float] = []
        made: list[int] = []
        start = time.perf_counter()
        for at in range(0, len(chosen), level):
            waited = time.perf_counter() - start  # a request waits for the waves before it
            ttft, counts = wave(chosen[at : at + level], adapters[at : at + level], plan["tokens"])
            firsts += [waited + ttft] * len(counts)
            made += counts
        return Run(time.perf_counter() - start, sum(made), firsts, made)

    wave(texts[:ADAPTERS], names, 2)  # warm-up

    async def labelled(label: str, chosen: list[str], level: int) -> Run:
        mixed = [names[i % ADAPTERS] for i in range(len(chosen))]
        return run(chosen, mixed if label == "mixed" else ["__base__"] * len(chosen), level)

    return asyncio.run(over_levels("peft", plan, texts, labelled))


def limits(shape: Shape, plan: dict[str, Any]) -> dict[str, Any] | None:
    """Roofline tokens/s of one decode step over the weights (bytes at the bandwidth or
    FLOPs at the peak, whichever takes longer); mixed adds the 8 adapters' bytes and each
    row's adapter FLOPs. KV-cache reads are left out: an upper bound."""
    bandwidth, peak = plan["bandwidth_gbs"], plan["peak_tflops"]
    if bandwidth is None:
        return None
    size = 2 if plan["dtype"] in ("bfloat16", "float16") else 4
    weights, lora = shape.weights_read_per_step(), shape.lora_parameters()
    out: dict[str, Any] = {}
    for level in plan["levels"]:
        rows = min(plan["prompts"] or level, level)  # decoding together

        def step(read: int, flops: float) -> float:
            compute = flops / (peak * 1e12) if peak else 0.0
            return max(read * size / (bandwidth * 1e9), compute)

        base = rows / step(weights, 2.0 * weights * rows)
        mixed = rows / step(weights + ADAPTERS * lora, 2.0 * (weights + lora) * rows)
        out[str(level)] = {
            "base": {"tokens_per_s": base},
            "mixed": {"tokens_per_s": mixed},
            "mixed_vs_base": mixed / base,
        }
    return out


def _pair(runs: dict[str, Any]) -> dict[str, Any]:
    return runs | {"mixed_vs_base": runs["mixed"]["tokens_per_s"] / runs["base"]["tokens_per_s"]}


def _brief(result: dict[str, Any]) -> str:
    return (
        f"base {result['base']['tokens_per_s']:.1f} tok/s, mixed "
        f"{result['mixed']['tokens_per_s']:.1f} ({result['mixed_vs_base']:.2f})"
    )


def _free() -> None:
    """Give the device's memory back between systems (the next one sizes itself from it)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def stdout_to_stderr(on: bool) -> Iterator[Any]:
    """While on, everything written to fd 1 (vLLM's processes and C code included) goes to
    stderr; yields a stream for the real stdout."""
    if not on:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as real:
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def report(doc: dict[str, Any], out: Any) -> None:
    def row(system: str, level: str, r: dict[str, Any]) -> str:
        def ttft(kind: str) -> str:
            return f"{r[kind]['ttft_p50_s'] * 1000:>9.0f}" if "ttft_p50_s" in r[kind] else " " * 9

        return (
            f"{system:<15}{level:>6}{r['base']['tokens_per_s']:>12.1f}{ttft('base')}"
            f"{r['mixed']['tokens_per_s']:>12.1f}{ttft('mixed')}{r['mixed_vs_base']:>10.2f}"
        )

    print(
        f"{doc['shape']} ({doc['parameters'] / 1e9:.2f} B parameters, {doc['dtype']}) on "
        f"{doc['device_name']}: {doc['tokens']} tokens a request after {doc['prompt_tokens']} "
        f"prompt tokens, {ADAPTERS} rank-{RANK} adapters",
        file=out,
    )
    print(
        f"{'system':<15}{'conc.':>6}{'base tok/s':>12}{'ttft ms':>9}{'mixed tok/s':>12}"
        f"{'ttft ms':>9}{'mix/base':>10}",
        file=out,
    )
    for system, levels in doc["systems"].items():
        for level, result in (levels or {}).items():
            print(row(system, level, result), file=out)
    for system, why in doc["skipped"].items():
        print(f"{system}: not run ({why})", file=out)


def main(
    shape_name: Annotated[str, typer.Option("--shape", help=", ".join(SHAPES))] = "llama-3-8b",
    concurrency: Annotated[str, typer.Option(help="concurrent requests, comma-separated")] = (
        "32,128"
    ),
    tokens: Annotated[int, typer.Option(help="tokens each request generates")] = 128,
    prompt_tokens: Annotated[int, typer.Option()] = 128,
    prompts: Annotated[
        int | None, typer.Option(help="requests per run (default: the concurrency)")
    ] = None,
    repeats: Annotated[int, typer.Option()] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32")] = "bfloat16",
    systems: Annotated[str, typer.Option(help="comma-separated: hf, peft, vllm")] = "hf,peft,vllm",
    bandwidth_gbs: Annotated[
        float | None, typer.Option(help="memory bandwidth; default: by device name")
    ] = None,
    peak_tflops: Annotated[
        float | None, typer.Option(help="dense peak; default: by device name")
    ] = None,
    vllm_memory: Annotated[
        float | None,
        typer.Option(help="vLLM's gpu_memory_utilization; default 0.85 on a GPU, 0.5 on the CPU"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    if shape_name not in SHAPES:
        raise typer.BadParameter(f"unknown shape {shape_name!r}: {', '.join(SHAPES)}")
    with stdout_to_stderr(as_json) as stdout:
        doc = run(
            SHAPES[shape_name],
            shape_name,
            {
                "levels": [int(c) for c in concurrency.split(",")],
                "tokens": tokens,
                "prompt_tokens": prompt_tokens,
                "prompts": prompts,
                "repeats": repeats,
                "device_setting": device,
                "dtype": dtype,
                "bandwidth_gbs": bandwidth_gbs,
                "peak_tflops": peak_tflops,
                "vllm_memory": vllm_memory,
            },
            [s.strip() for s in systems.split(",") if s.strip()],
        )
        if as_json:
            print(json.dumps(doc, indent=2), file=stdout)
            report(doc, sys.stderr)
        else:
            report(doc, stdout)


def run(shape: Shape, name: str, plan: dict[str, Any], systems: list[str]) -> dict[str, Any]:
    import importlib.util

    import torch

    from switchboard_lora.router.devices import torch_device
    from switchboard_lora.serving.engines.hf.engine import HFEngine
    from switchboard_lora.serving.engines.vllm_engine import VLLMEngine, VLLMOptions

    plan["device"] = torch_device(plan["device_setting"], "device")
    device_name = (
        torch.cuda.get_device_name(plan["device"]) if plan["device"].type == "cuda" else "cpu"
    )
    known_bandwidth, known_peak = device_figures(device_name)
    plan["bandwidth_gbs"] = plan["bandwidth_gbs"] or known_bandwidth
    plan["peak_tflops"] = plan["peak_tflops"] or known_peak
    on_gpu = plan["device"].type == "cuda"
    plan["vllm_memory"] = plan["vllm_memory"] or (0.85 if on_gpu else 0.5)
    doc: dict[str, Any] = {
        "shape": name,
        "parameters": _parameters(shape),
        "device": str(plan["device"]),
        "device_name": device_name,
        "torch": torch.__version__,
        "dtype": plan["dtype"],
        "tokens": plan["tokens"],
        "prompt_tokens": plan["prompt_tokens"],
        "prompts": plan["prompts"],
        "concurrency": plan["levels"],
        "adapters": ADAPTERS,
        "rank": RANK,
        "bandwidth_gbs": plan["bandwidth_gbs"],
        "peak_tflops": plan["peak_tflops"],
        "systems": {},
        "skipped": {},
    }
    count = max(ADAPTERS, plan["prompts"] or 0, *plan["levels"])  # the warm-ups take 8
    texts = prompt_texts(shape, count, plan["prompt_tokens"])
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = write_base(shape, Path(tmp) / "base")
        dtype = getattr(torch, plan["dtype"])
        loras = write_loras(shape, base_dir, Path(tmp), plan["device"], dtype)
        log.info("base %s and %d adapters written to %s", name, ADAPTERS, tmp)
        if "hf" in systems:
            engine = HFEngine(
                base_dir,
                device=str(plan["device"]),
                dtype=plan["dtype"],
                max_batch=max(plan["levels"]),
                max_adapters=ADAPTERS,
                load_format="dummy",
            )
            doc["systems"]["switchboard-hf"] = asyncio.run(
                measure_engine(engine, loras, texts, plan)
            )
            del engine
            _free()
        if "peft" in systems:
            doc["systems"]["peft"] = measure_peft(base_dir, loras, texts, plan)
            _free()
        if "vllm" in systems:
            if importlib.util.find_spec("vllm") is None:
                doc["skipped"]["vllm"] = "not installed"
            else:
                options = VLLMOptions(
                    max_loras=ADAPTERS,
                    max_lora_rank=RANK,
                    dtype=plan["dtype"],
                    max_model_len=plan["prompt_tokens"] + plan["tokens"] + 16,
                    gpu_memory_utilization=plan["vllm_memory"],
                    max_num_seqs=max(plan["levels"]),
                    load_format="dummy",
                )
                doc["systems"]["vllm"] = asyncio.run(
                    measure_engine(VLLMEngine(base_dir, options), loras, texts, plan)
                )
    limit = limits(shape, plan)
    if limit is None:
        doc["skipped"]["limit"] = f"no bandwidth known for {device_name}: pass --bandwidth-gbs"
    else:
        doc["systems"]["limit"] = limit
    return doc


def _parameters(shape: Shape) -> int:
    embeddings = 0 if shape.tied else shape.vocab * shape.hidden
    return shape.weights_read_per_step() + embeddings


if __name__ == "__main__":
    run_benchmark(main)
