"""Does mixing adapters help? Top-1, top-2 mix and the base, by the loss of reference answers.

    python -m bench.mixing [--per-set 60] [--sdist FILE] [--home DIR] [--json]

The demo's `math` and `science` LoRA adapters (trained with the demo's full budget, once, into
a scratch registry under the home's `bench/mixing`; later runs reuse them), routed by the
default router with the demo's `base` examples. Requests that span both domains, from
public sets that are neither adapter's training data (BIG-bench):

- `physics_questions`: numeric physics problems; the reference is the number with its unit;
- `physics`: physics problems; the reference is the formula that solves them;
- `unit_conversion/different_systems`: physical quantities converted across unit systems.

And, as controls, the held-out requests of each domain (a mix must not cost them). Every
request is scored under: the base; `math` alone; `science` alone; the router's choice with
`top_k = 1` (today's default: an adapter, or the base when the gate says so); the router's
choice with `top_k = 2` (a mix where the policy mixes, weights from its softmax, built as an
exact mixture, as the server does); a fixed 50/50 mix; and the better single adapter per
request (an oracle: the best any top-1 router could do). The figure is the mean loss per
answer token (lower is better).
"""

from __future__ import annotations

import json
import random
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import HomeOption, default_base, run_benchmark
from bench.router_sets import Tasks
from support.paths import DATA
from switchboard_lora.demo import FULL, ensure_adapters
from switchboard_lora.demo_data import bigbench_sdist
from switchboard_lora.registry import BaseModelInfo, Registry, RegistrySettings
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.router.decision import Policy
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.router import RegistryRoutes, Router
from switchboard_lora.router.scorers import DEFAULT_THRESHOLD
from switchboard_lora.serving.mixture import build_mixture
from switchboard_lora.trainer.data import Example, load_jsonl
from switchboard_lora.trainer.encoding import encode
from switchboard_lora.trainer.losses import loss_per_row, token_mean

DOMAINS = ("math", "science")
SPANNING = ("physics_questions", "physics", "unit_conversion/different_systems")
CONDITIONS = ("base", "math", "science", "routed top-1", "routed top-2", "50/50 mix", "oracle")


def _chat(question: str, answer: str) -> Example:
    return Example(line=0, messages=(("user", question.strip()), ("assistant", answer.strip())))


def _answer(example: dict[str, Any]) -> str | None:
    target = example.get("target")
    if isinstance(target, list) and target:
        return str(target[0])
    if isinstance(target, str):
        return target
    scores = example.get("target_scores")
    if isinstance(scores, dict) and scores:
        return str(max(scores, key=lambda k: scores[k]))
    return None


def request_sets(tasks: Tasks, per_set: int) -> dict[str, list[Example]]:
    """The spanning sets and the two controls, `per_set` requests each at most."""
    rng = random.Random(20261124)
    sets: dict[str, list[Example]] = {}
    for task in SPANNING:
        rows = [
            _chat(e["input"], answer)
            for e in tasks.inputs(task)
            if isinstance(e.get("input"), str) and e["input"].strip() and (answer := _answer(e))
        ]
        sets[task] = rng.sample(rows, min(per_set, len(rows)))
    for domain in DOMAINS:
        sets[f"{domain} (control)"] = list(
            load_jsonl(DATA / domain / "eval.jsonl").examples[:per_set]
        )
    return sets


def _routed(router: Router, texts: list[str]) -> list[list[tuple[str, float]]]:
    """Per request, the adapters the router serves it with and their weights ([] = base)."""
    parts = []
    for decision in router.decide_texts(texts):
        parts.append([(c.ref, c.weight) for c in decision.choices])
    return parts


def measure(base: BaseModelInfo, home: Path, sets: dict[str, list[Example]]) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = Registry(RegistrySettings(home=home).registry_url, home)
    try:
        say = partial(print, file=sys.stderr, flush=True)  # stdout is for --json
        refs = ensure_adapters(registry, base, DATA, FULL, say, DOMAINS)
        general = (DATA / "general" / "routes.jsonl").read_text().splitlines()
        registry.routes.add_examples(
            BASE_ROUTE, [json.loads(line)["text"] for line in general], "demo data"
        )
        encoder = Encoder()
        routers = {
            k: Router(RegistryRoutes(registry), encoder, Policy(DEFAULT_THRESHOLD["linear"], k))
            for k in (1, 2)
        }
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model: Any = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
        loaded: dict[tuple[tuple[str, float], ...], str] = {}

        def adapter_for(parts: list[tuple[str, float]]) -> str | None:
            """The PEFT adapter serving `parts` (a single LoRA, or the exact mixture the
            server would build), loaded once."""
            nonlocal model
            if not parts:
                return None
            key = tuple(sorted(parts))
            if key not in loaded:
                if len(parts) == 1:
                    version, path = registry.checkout(parts[0][0])
                else:
                    mix = build_mixture(registry, parts, base)
                    version, path = registry.checkout(mix.version.ref)
                name = version.served_name
                if isinstance(model, PeftModel):
                    model.load_adapter(str(path), adapter_name=name)
                else:
                    model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
                loaded[key] = name
            return loaded[key]

        results: dict[str, Any] = {}
        for name, examples in sets.items():
            pairs = [(x, e) for x in examples if (e := encode(tokenizer, x, 256)) is not None]
            encoded = [e for _, e in pairs]
            texts = [x.request for x, _ in pairs]
            plans: dict[str, list[list[tuple[str, float]]]] = {
                "base": [[] for _ in texts],
                "math": [[(refs["math"], 1.0)] for _ in texts],
                "science": [[(refs["science"], 1.0)] for _ in texts],
                "routed top-1": _routed(routers[1], texts),
                "routed top-2": _routed(routers[2], texts),
                "50/50 mix": [[(refs["math"], 0.5), (refs["science"], 0.5)] for _ in texts],
            }
            rows: dict[str, list[tuple[float, int]]] = {}
            for condition, per_request in plans.items():
                rows[condition] = [(0.0, 0)] * len(encoded)
                for adapter in {adapter_for(p) for p in per_request}:
                    picked = [i for i, p in enumerate(per_request) if adapter_for(p) == adapter]
                    if isinstance(model, PeftModel) and adapter is None:
                        with model.disable_adapter():
                            scored = loss_per_row(model, [encoded[i] for i in picked], 8, pad)
                    else:
                        if adapter is not None:
                            model.set_adapter(adapter)
                        scored = loss_per_row(model, [encoded[i] for i in picked], 8, pad)
                    for i, row in zip(picked, scored, strict=True):
                        rows[condition][i] = row
            rows["oracle"] = [min(m, s) for m, s in zip(rows["math"], rows["science"], strict=True)]
            mixed = sum(len(p) > 1 for p in plans["routed top-2"])
            to_base = sum(not p for p in plans["routed top-1"])
            results[name] = {
                "n": len(encoded),
                "loss": {c: token_mean(rows[c]) for c in CONDITIONS},
                "top2_mixed": mixed,
                "top1_to_base": to_base,
            }
        return {"adapters": refs, "sets": results}
    finally:
        registry.close()


def main(
    per_set: Annotated[int, typer.Option(help="Requests per set, at most.")] = 60,
    sdist: Annotated[Path | None, typer.Option(help="The bigbench sdist, if at hand.")] = None,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    settings = RegistrySettings() if home is None else RegistrySettings(home=home)
    base = default_base(home)
    tasks = Tasks(sdist or bigbench_sdist(settings.home_dir))
    scratch = settings.home_dir / "bench" / "mixing"  # reused: the adapters train once
    scratch.mkdir(parents=True, exist_ok=True)
    results = measure(base, scratch, request_sets(tasks, per_set))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    print("\nmean loss per answer token (lower is better); adapters", results["adapters"])
    print(f"{'set':34} {'n':>3} " + " ".join(f"{c:>12}" for c in CONDITIONS) + "  mixed  base")
    for name, r in results["sets"].items():
        losses = " ".join(f"{r['loss'][c]:12.3f}" for c in CONDITIONS)
        print(f"{name:34} {r['n']:3d} {losses}  {r['top2_mixed']:5d} {r['top1_to_base']:5d}")
    print("(mixed: requests the top-2 router mixed; base: requests the top-1 router sent to base)")


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_benchmark(main)
