"""The router at 100 and 1,000 routes: BIG-bench tasks as routes, 20 requests each.

Many tasks are near twins (`list_functions/c001` … `c250`, the `mult_data_wrangling` and
`multiemo` families), so top-1 accuracy between routes is a floor, not a target; what must hold
as routes grow is that general requests still go to base (fallback recall), that a route's own
held-out requests still pass the gate, and what a decision and a refit cost.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.router_sets import NEGATIVE_SOURCES, TASK_SETS, Tasks, jsonl
from router.encoder import Encoder
from router.evaluate import evaluate
from router.router import FileRoutes, Router

PER_ROUTE = 20
HELD_PER_ROUTE = 2
SIZES = (100, 1_000)  # the larger is capped at the tasks that qualify
QUERY = "What is 17 times 23?"  # a short request: decision time, as in --part latency
# General test requests (expected `base`), from tasks never used as routes.
GENERAL = TASK_SETS["paired"].general
_NOT_ROUTES = {task for task, _ in GENERAL} | {"qa_wikidata", *NEGATIVE_SOURCES}


def _route_name(task: str) -> str:
    name = task.lower().replace("/", "-").replace("_", "-")
    return name[:63].rstrip("-")


def _candidates(tasks: Tasks, rng: random.Random) -> dict[str, list[str]]:
    """Every task with enough distinct requests of its own: route name -> its requests."""
    found: dict[str, list[str]] = {}
    for task, examples in tasks.each_task():
        if task.split("/")[0] in _NOT_ROUTES or task in _NOT_ROUTES:
            continue
        requests = tasks.requests_from(task, examples, PER_ROUTE + HELD_PER_ROUTE, rng)
        if len(requests) == PER_ROUTE + HELD_PER_ROUTE:
            found[_route_name(task)] = requests
    return found


def scale(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    rng = random.Random(20261124)
    candidates = _candidates(tasks, rng)
    negatives = sorted({r for t in NEGATIVE_SOURCES for r in tasks.requests(t, 50, rng)})[:50]
    general = [(t, "base") for task, n in GENERAL for t in tasks.requests(task, n, rng)]
    names = sorted(candidates)
    rng.shuffle(names)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sorted({min(size, len(names)) for size in SIZES}):
        chosen = names[:size]
        rows = [{"name": n, "text": t} for n in chosen for t in candidates[n][:PER_ROUTE]]
        rows += [{"name": "base", "text": t} for t in negatives]
        path = jsonl(out / f"scale-{size}.jsonl", rows)
        held = [(t, n) for n in chosen for t in candidates[n][PER_ROUTE:]]
        router = Router(FileRoutes(path), encoder)
        router.cache.vectors([r["text"] for r in rows])  # embedding is not the refit
        start = time.perf_counter()
        router.index()
        fit_s = time.perf_counter() - start
        domain = evaluate(router, held)
        fallback = evaluate(router, general)
        router.decide(QUERY)
        times = []
        for _ in range(50):
            start = time.perf_counter()
            router.decide(QUERY)
            times.append(time.perf_counter() - start)
        sent: Counter[str] = Counter()
        for row in fallback.confusion.values():
            sent.update(row)
        results.append(
            {
                "routes": size,
                "examples": len(rows),
                "accuracy": domain.accuracy,
                "false_fallback_rate": domain.false_fallback_rate,
                "fallback_recall": fallback.fallback_recall,
                "decision_p50_ms": float(np.median(times)) * 1e3,
                "refit_s": fit_s,
                "general_went_to": dict(sent.most_common(6)),
            }
        )
    return {"per_route": PER_ROUTE, "qualifying_tasks": len(names), "results": results}
