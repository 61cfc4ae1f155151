"""The router benchmark's sets, read from committed extracts (`bench/data/routing/`, with
their sources in `SOURCES.md` there; `python -m bench.routing_data` rebuilt them). Nothing is
downloaded at run time.

Each set is routes (an operator's examples per route, and `base` examples if any) and
labelled test requests phrased unlike the examples (`expected` a route or `base`):

- `demo`, `demo-nobase`: the demo's domains, routed on the 50 training requests each of its
  adapters carries (calibrated, where a row says so, on 100 held-out requests per domain from
  the same source and the demo's 70 general-knowledge questions); tested on other sources'
  requests for the same domains (SVAMP and GSM8K for math, SEDE for sql, SciBench's chemistry
  for science, MBPP and HumanEval for code, CLINC's small talk for dialogue) and on general
  requests (BIG-Bench Hard, CLINC's other domains). Once with the demo's `base` examples,
  once with none.
- `clinc-domains-K`: CLINC150's domains as routes, 10 examples each; 3 domains held out per
  fold and their requests labelled `base`; no `base` examples (an operator with only their
  own domains). Five folds, each domain held out at least once.
- `banking77+oos` (held out: reported apart, never used to choose): banking77's 77 intents
  as routes, 10 examples each, with requests of CLINC's non-financial domains as `base`.

`intent_routes` gives the many-routes sets (CLINC's intents, banking77's) at a chosen count.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from support.paths import DATA, ROOT
from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.loop import routing_sample

EXTRACTS = ROOT / "bench" / "data" / "routing"
HELD_OUT = "banking77+oos"
CLINC_FOLDS = 5
CLINC_HELD_DOMAINS = 3
FEW_SHOT = 10  # examples per route where the set says so


@dataclass(frozen=True, slots=True)
class RouteSet:
    name: str
    routes: dict[str, list[str]]  # route -> its examples
    test: list[tuple[str, str]]  # (text, expected route or base)
    base: list[str] = field(default_factory=list)  # the operator's `base` examples
    calibration: list[tuple[str, str]] = field(default_factory=list)  # same-source held out
    descriptions: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # per test row, where it came from

    @property
    def chooses(self) -> bool:
        """Whether defaults may be chosen on it (the held-out set is only reported)."""
        return self.name != HELD_OUT

    def routes_rows(self) -> list[dict[str, str]]:
        rows = [{"name": n, "text": t} for n, texts in self.routes.items() for t in texts]
        return rows + [{"name": BASE_ROUTE, "text": t} for t in self.base]

    def write(self, folder: Path) -> tuple[Path, Path]:
        """The routes file and the labelled test file `switchboard route eval` reads."""
        folder.mkdir(parents=True, exist_ok=True)
        routes = jsonl(folder / "routes.jsonl", self.routes_rows())
        test = jsonl(folder / "test.jsonl", [{"text": t, "expected": e} for t, e in self.test])
        return routes, test


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@cache
def extract(name: str) -> tuple[dict[str, Any], ...]:
    path = EXTRACTS / name
    return tuple(json.loads(line) for line in path.read_text().splitlines())


# Route descriptions as an operator would write them from the route's purpose (written before
# any set was scored with them, and not edited after).
DEMO_DESCRIPTIONS = {
    "math": "Math problems: arithmetic, algebra, word problems, equations and proofs.",
    "sql": "Writing SQL queries against database tables and schemas.",
    "science": "Science questions about physics, chemistry, biology and the natural world.",
    "code": "Programming: writing, explaining and debugging Python code.",
    "dialogue": "Casual conversation and replies in an everyday chat.",
}


def demo(with_base: bool = True) -> RouteSet:
    routes, calibration = {}, []
    for domain in DOMAINS:
        train = load_jsonl(DATA / domain / "train.jsonl").examples
        routes[domain] = routing_sample(train, 50, seed=0)  # what the trainer stores
        held = load_jsonl(DATA / domain / "eval.jsonl").examples
        calibration += [(t, domain) for t in routing_sample(held, 100, seed=0)]
    # Held-out general requests for calibration: BIG-bench's general-knowledge questions
    # (the demo's `base` examples are BIG-bench requests too: the same source).
    knowledge = (DATA / "general" / "knowledge.jsonl").read_text().splitlines()
    calibration += [(json.loads(line)["question"], BASE_ROUTE) for line in knowledge]
    base = []
    if with_base:
        general = (DATA / "general" / "routes.jsonl").read_text().splitlines()
        base = [json.loads(line)["text"] for line in general]
    rows = extract("demo_test.jsonl")
    return RouteSet(
        "demo" if with_base else "demo-nobase",
        routes,
        [(r["text"], r["expected"]) for r in rows],
        base,
        calibration,
        DEMO_DESCRIPTIONS,
        [r["source"] for r in rows],
    )


def clinc_domains(fold: int) -> RouteSet:
    """CLINC's domains as routes but `CLINC_HELD_DOMAINS` of them, held out in turn."""
    rows = extract("clinc.jsonl")
    domains = sorted({r["domain"] for r in rows})
    held = {domains[(2 * fold + i) % len(domains)] for i in range(CLINC_HELD_DOMAINS)}
    routes = {}
    for domain in domains:
        if domain not in held:
            pool = [r["text"] for r in rows if r["domain"] == domain and r["split"] == "train"]
            random.Random(f"clinc-domains/{fold}/{domain}").shuffle(pool)
            routes[domain] = pool[:FEW_SHOT]
    test = [
        (r["text"], BASE_ROUTE if r["domain"] in held else r["domain"])
        for r in rows
        if r["split"] == "test"
    ]
    return RouteSet(f"clinc-domains-{fold}", routes, test, sources=["clinc"] * len(test))


def route_name(intent: str) -> str:
    """An intent's name as a route may be called (banking77's carry capitals and '?')."""
    return re.sub(r"[^a-z0-9_-]", "", intent.lower())


def intent_routes(
    name: str, count: int | None = None, per_route: int = FEW_SHOT, seed: str = "routes"
) -> RouteSet:
    """`count` intents of CLINC (`clinc`) or banking77 (`banking77`) as routes (all if None;
    the first `count` of one seeded order, so a larger count adds routes to a smaller one's),
    `per_route` training requests each; the test is their intents' test requests."""
    rows = [{**r, "intent": route_name(r["intent"])} for r in extract(f"{name}.jsonl")]
    intents = sorted({r["intent"] for r in rows})
    if count is not None and count < len(intents):
        random.Random(f"{name}/{seed}").shuffle(intents)
        intents = sorted(intents[:count])
    routes = {
        i: [r["text"] for r in rows if r["intent"] == i and r["split"] == "train"][:per_route]
        for i in intents
    }
    test = [
        (r["text"], r["intent"]) for r in rows if r["split"] == "test" and r["intent"] in routes
    ]
    return RouteSet(f"{name}-{len(intents)}", routes, test, sources=[name] * len(test))


def banking_with_oos() -> RouteSet:
    """banking77's intents as routes; CLINC's requests outside banking and credit cards, which
    no route covers, as `base`."""
    found = intent_routes("banking77")
    pool = [
        r["text"]
        for r in extract("clinc.jsonl")
        if r["split"] == "test" and r["domain"] not in ("banking", "credit_cards")
    ]
    random.Random(HELD_OUT).shuffle(pool)
    general = [(t, BASE_ROUTE) for t in pool[:300]]
    return RouteSet(
        HELD_OUT,
        found.routes,
        found.test + general,
        sources=found.sources + ["clinc"] * len(general),
    )


def route_sets() -> Iterator[RouteSet]:
    """Every set of the `sets` part: those that choose defaults, then the held-out one."""
    yield demo(with_base=True)
    yield demo(with_base=False)
    for fold in range(CLINC_FOLDS):
        yield clinc_domains(fold)
    yield banking_with_oos()
