"""Does mixing adapters help? Top-1, top-2 mix and the base, by the loss of reference answers.

    python -m bench.mixing [--per-set 60] [--home DIR] [--json]

The demo's `math` and `science` LoRA adapters (trained with the demo's full budget, once, into
a scratch registry under the home's `bench/mixing`; later runs reuse them), routed by the
default router with the demo's `base` examples. Requests that span both domains, from a
public set that is neither adapter's training data: SciBench's physics textbook problems
(`fund`, `class`, `thermo`; numeric, the reference the number with its unit), from the
committed extract `bench/data/routing/spanning.jsonl`.

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
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import HomeOption, default_base, run_benchmark
from bench.answer_loss import AnswerLoss, Plan, chat, demo_registry, routed, trained
from bench.router_sets import extract
from support.paths import DATA
from switchboard_lora.registry import BaseModelInfo, Registry, RegistrySettings
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.router.decision import Policy
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.gate import DEFAULT_THRESHOLD
from switchboard_lora.router.router import RegistryRoutes, Router
from switchboard_lora.trainer.data import Example, load_jsonl
from switchboard_lora.trainer.losses import token_mean

DOMAINS = ("math", "science")
CONDITIONS = ("base", "math", "science", "routed top-1", "routed top-2", "50/50 mix", "oracle")


def request_sets(per_set: int) -> dict[str, list[Example]]:
    """The spanning sets (one per SciBench textbook) and the two controls, `per_set`
    requests each at most."""
    rng = random.Random(20261124)
    sets: dict[str, list[Example]] = {}
    for row in extract("spanning.jsonl"):
        sets.setdefault(row["label"], []).append(chat(row["text"], row["reference"]))
    for name, rows in sets.items():
        sets[name] = rng.sample(rows, min(per_set, len(rows)))
    for domain in DOMAINS:
        sets[f"{domain} (control)"] = list(
            load_jsonl(DATA / domain / "eval.jsonl").examples[:per_set]
        )
    return sets


def measure(base: BaseModelInfo, home: Path, sets: dict[str, list[Example]]) -> dict[str, Any]:
    registry = Registry(RegistrySettings(home=home).registry_url, home)
    try:
        refs = trained(registry, base, DOMAINS)
        general = (DATA / "general" / "routes.jsonl").read_text().splitlines()
        registry.routes.add_examples(
            BASE_ROUTE, [json.loads(line)["text"] for line in general], "demo data"
        )
        encoder = Encoder()
        routers = {
            k: Router(RegistryRoutes(registry), encoder, Policy(DEFAULT_THRESHOLD, k))
            for k in (1, 2)
        }
        scorer = AnswerLoss(registry, base)
        results: dict[str, Any] = {}
        for name, examples in sets.items():
            pairs = scorer.usable(examples)
            encoded = [e for _, e in pairs]
            texts = [x.request for x, _ in pairs]
            plans: dict[str, list[Plan]] = {
                "base": [[] for _ in texts],
                "math": [[(refs["math"], 1.0)] for _ in texts],
                "science": [[(refs["science"], 1.0)] for _ in texts],
                "routed top-1": routed(routers[1], texts),
                "routed top-2": routed(routers[2], texts),
                "50/50 mix": [[(refs["math"], 0.5), (refs["science"], 0.5)] for _ in texts],
            }
            rows = {condition: scorer.rows(encoded, p) for condition, p in plans.items()}
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
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    base = default_base(home)
    results = measure(base, demo_registry(home), request_sets(per_set))
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
