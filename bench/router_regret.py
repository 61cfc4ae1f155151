"""Routing judged by its answers (`bench.router --part regret`).

For test requests with reference answers (the demo set's: SVAMP, GSM8K, SEDE, SciBench's
chemistry, MBPP, HumanEval, BIG-Bench Hard), the loss per answer token of the reference under:
(a) the router's choice; (b) the best of the base and each single adapter for that request
(the oracle); (c) the base; (d) the router's top-2 mix; and (e) always routing by the
request's label (its domain's adapter, the base for general requests). On the demo's five
adapters, trained as the demo trains them. Reported per router set-up (with and without the
demo's `base` examples) for the encoder given:

- **regret**: (a) - (b), against (e) - (b); target: at most half;
- **harm**: (a) - (c) over the requests whose oracle is the base (the general requests the
  base answers best: routing must not make them worse); target <= 0.02 nats per token.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from bench.answer_loss import AnswerLoss, chat, demo_registry, routed, trained
from bench.router_sets import extract
from support.paths import DATA
from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry import Registry, RegistrySettings
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.router.decision import Policy
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.router import RegistryRoutes, Router
from switchboard_lora.trainer.losses import token_mean

PER_SOURCE = 20  # requests per source with a reference answer


def _requests(per_source: int) -> list[dict[str, Any]]:
    by_source: dict[str, list[dict[str, Any]]] = {}
    for row in extract("demo_test.jsonl"):
        if row.get("reference"):
            by_source.setdefault(row["source"], []).append(row)
    rng = random.Random(20261208)
    return [r for rows in by_source.values() for r in rng.sample(rows, min(per_source, len(rows)))]


def _mean(rows: list[tuple[float, int]], keep: list[bool]) -> float:
    return token_mean([r for r, k in zip(rows, keep, strict=True) if k])


def regret(encoder: Encoder, home: Path | None, per_source: int = PER_SOURCE) -> dict[str, Any]:
    from bench._common import default_base

    base = default_base(home)
    folder = demo_registry(home)
    registry = Registry(RegistrySettings(home=folder).registry_url, folder)
    try:
        refs = trained(registry, base, DOMAINS)
        registry.routes.remove_examples(BASE_ROUTE)  # each set-up below says what it has
        scorer = AnswerLoss(registry, base)
        rows = []  # (request, its label, its encoding): those whose reference fits
        for row in _requests(per_source):
            example = chat(row["text"], row["reference"])
            if (encoded := scorer.encode(example)) is not None:
                rows.append((example.request, row["expected"], encoded))
        texts = [t for t, _, _ in rows]
        labels = [label for _, label, _ in rows]
        encoded = [e for _, _, e in rows]
        single = {"base": scorer.rows(encoded, [[] for _ in texts])}
        for domain in DOMAINS:
            single[domain] = scorer.rows(encoded, [[(refs[domain], 1.0)] for _ in texts])
        best = [min(single, key=lambda c: single[c][i][0]) for i in range(len(texts))]
        oracle = [single[b][i] for i, b in enumerate(best)]
        by_label = [single[label][i] for i, label in enumerate(labels)]  # `base` included
        base_best = [b == "base" for b in best]
        general = (DATA / "general" / "routes.jsonl").read_text().splitlines()
        negatives = [json.loads(line)["text"] for line in general]
        results = {}
        for setup in ("demo base examples", "no base examples"):
            if setup == "demo base examples":
                registry.routes.add_examples(BASE_ROUTE, negatives, "bench")
            else:
                registry.routes.remove_examples(BASE_ROUTE)
            source = RegistryRoutes(registry)
            plans = {
                f"top-{k}": routed(Router(source, encoder, Policy(top_k=k)), texts) for k in (1, 2)
            }
            served = scorer.rows(encoded, plans["top-1"])
            mixed = scorer.rows(encoded, plans["top-2"])
            results[setup] = {
                "n": len(texts),
                "routed": token_mean(served),
                "oracle": token_mean(oracle),
                "base": token_mean(single["base"]),
                "top2_mix": token_mean(mixed),
                "by_label": token_mean(by_label),
                "regret": token_mean(served) - token_mean(oracle),
                "regret_by_label": token_mean(by_label) - token_mean(oracle),
                "harm": _mean(served, base_best) - _mean(single["base"], base_best),
                "oracle_is_base": sum(base_best),
                "to_base": sum(not p for p in plans["top-1"]),
                "regret_per_label": {
                    label: _mean(served, [lab == label for lab in labels])
                    - _mean(oracle, [lab == label for lab in labels])
                    for label in sorted(set(labels))
                },
            }
        registry.routes.remove_examples(BASE_ROUTE)
        return {"adapters": refs, "per_source": per_source, "setups": results}
    finally:
        registry.close()
