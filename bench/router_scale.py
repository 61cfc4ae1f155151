"""The router at 100 and 1,000 routes: BIG-bench tasks as routes, 20 requests each.

A route is a domain: a task carrying none of BIG-bench's general-ability keywords (`GENERAL`:
common sense, world knowledge, social and ethical reasoning, truthfulness, …). The general
test requests come from tasks that do carry them, which by that rule are never routes: they
are what the base must keep answering however many domains are added.

Many tasks are near twins (`list_functions/c001` … `c250`, the `mult_data_wrangling` and
`multiemo` families), so top-1 accuracy between routes is a floor, not a target; what must hold
as routes grow is that general requests still go to base (fallback recall), that a route's own
held-out requests still pass the gate, and what a decision, a full fit and a refit after
adding one route cost.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.router_sets import NEGATIVE_SOURCES, TASK_SETS, Tasks, jsonl
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.evaluate import evaluate
from switchboard_lora.router.router import FileRoutes, Router

PER_ROUTE = 20
HELD_PER_ROUTE = 2
SIZES = (100, 1_000)  # the larger is capped at the tasks that qualify
SWEEP = (0.5, 0.8, 0.9, 0.95, 0.99)  # gate thresholds: what a stricter one would trade
QUERY = "What is 17 times 23?"  # a short request: decision time, as in --part latency
# BIG-bench keywords of general ability: a task with any of them is not a domain route.
GENERAL = {
    "common sense",
    "commonsense",
    "context-free question answering",
    "world knowledge",
    "social reasoning",
    "causal reasoning",
    "theory of mind",
    "human-like behavior",
    "truthfulness",
    "alignment",
    "emotional intelligence",
    "social bias",
    "gender bias",
    "racial bias",
    "religious bias",
    "fallacy",
    "memorization",
    "riddle",
}
# General test requests (expected `base`): tasks with general keywords, so never routes; two
# sets of different kinds, so that the gate is not judged on one.
GENERAL_TESTS = {
    "questions": (*TASK_SETS["paired"].general, ("strategyqa", 40), ("general_knowledge", 40)),
    "chat and other": tuple(
        (task, 25)
        for task in (
            "topical_chat",
            "timedial",
            "known_unknowns",
            "riddle_sense",
            "social_iqa",
            "english_proverbs",
            "crass_ai",
            "implicatures",
        )
    ),
}


def _route_name(task: str) -> str:
    name = task.lower().replace("/", "-").replace("_", "-")
    return name[:63].rstrip("-")


def _candidates(tasks: Tasks, rng: random.Random) -> dict[str, list[str]]:
    """Every task with enough distinct requests of its own: route name -> its requests."""
    found: dict[str, list[str]] = {}
    for task, examples, keywords in tasks.each_task():
        if keywords & GENERAL:
            continue
        requests = tasks.requests_from(task, examples, PER_ROUTE + HELD_PER_ROUTE, rng)
        if len(requests) == PER_ROUTE + HELD_PER_ROUTE:
            found[_route_name(task)] = requests
    return found


def scale(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    rng = random.Random(20261124)
    candidates = _candidates(tasks, rng)
    negatives = sorted({r for t in NEGATIVE_SOURCES for r in tasks.requests(t, 50, rng)})[:50]
    general = {
        name: [(t, "base") for task, n in sources for t in tasks.requests(task, n, rng)]
        for name, sources in GENERAL_TESTS.items()
    }
    names = sorted(candidates)
    rng.shuffle(names)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sorted({min(size, len(names) - 1) for size in SIZES}):
        chosen = names[:size]
        rows = [{"name": n, "text": t} for n in chosen for t in candidates[n][:PER_ROUTE]]
        rows += [{"name": "base", "text": t} for t in negatives]
        path = jsonl(out / f"scale-{size}.jsonl", rows)
        held = [(t, n) for n in chosen for t in candidates[n][PER_ROUTE:]]
        router = Router(FileRoutes(path), encoder)
        router.cache.vectors([r["text"] for r in rows])  # embedding is not the refit
        fit_s, fit_iterations = _fit(router)
        domain = evaluate(router, held)
        fallback = {name: evaluate(router, rows) for name, rows in general.items()}
        router.decide(QUERY)
        times = []
        for _ in range(50):
            start = time.perf_counter()
            router.decide(QUERY)
            times.append(time.perf_counter() - start)
        sent: Counter[str] = Counter()
        for report in fallback.values():
            for row in report.confusion.values():
                sent.update(row)
        results.append(
            {
                "routes": size,
                "examples": len(rows),
                "accuracy": domain.accuracy,
                "false_fallback_rate": domain.false_fallback_rate,
                "fallback_recall": {n: r.fallback_recall for n, r in fallback.items()},
                "decision_p50_ms": float(np.median(times)) * 1e3,
                "refit_s": fit_s,
                "refit_iterations": fit_iterations,
                "gate_sweep": _sweep(router, held, [r for rows in general.values() for r in rows]),
                **_add_one(router, rows, names[size], candidates, out, held),
                "general_went_to": dict(sent.most_common(6)),
            }
        )
    return {"per_route": PER_ROUTE, "qualifying_tasks": len(names), "results": results}


def _sweep(
    router: Router, held: list[tuple[str, str]], general: list[tuple[str, str]]
) -> list[dict[str, float]]:
    """Per gate threshold: the share of general requests sent to base (fallback recall) and
    of the routes' own held-out requests sent there (false fallback)."""

    def gates(rows: list[tuple[str, str]]) -> np.ndarray:
        decisions = router.decide_texts([t for t, _ in rows])
        return np.array([d.in_domain or 0.0 for d in decisions])

    own, other = gates(held), gates(general)
    return [
        {
            "threshold": t,
            "fallback_recall": float(np.mean(other < t)),
            "false_fallback_rate": float(np.mean(own < t)),
        }
        for t in SWEEP
    ]


def _fit(router: Router) -> tuple[float, int]:
    """Build the router's index now: seconds, and the solver's iterations."""
    start = time.perf_counter()
    index = router.refresh()
    return time.perf_counter() - start, getattr(index.scorer, "iterations", 0)


def _add_one(
    router: Router,
    rows: list[dict[str, str]],
    name: str,
    candidates: dict[str, list[str]],
    out: Path,
    held: list[tuple[str, str]],
) -> dict[str, Any]:
    """One more route: the live router refits from its last fit; a fresh one fits from
    nothing. Both times, and how far their decisions agree (the same optimum, in theory)."""
    grown = rows + [{"name": name, "text": t} for t in candidates[name][:PER_ROUTE]]
    path = jsonl(out / f"scale-plus-{name}.jsonl", grown)
    router.source = FileRoutes(path)
    warm_s, warm_iterations = _fit(router)
    fresh = Router(FileRoutes(path), router.encoder)
    fresh.cache = router.cache
    cold_s, cold_iterations = _fit(fresh)
    texts = [t for t, _ in held] + candidates[name][PER_ROUTE:]
    same = [
        a.route == b.route
        for a, b in zip(router.decide_texts(texts), fresh.decide_texts(texts), strict=True)
    ]
    return {
        "add_one_s": warm_s,
        "add_one_iterations": warm_iterations,
        "add_one_cold_s": cold_s,
        "add_one_cold_iterations": cold_iterations,
        "add_one_agreement": sum(same) / len(same),
    }
