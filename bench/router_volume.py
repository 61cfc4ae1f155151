"""Route examples at volume: 100,000 added to one route of a live registry, while requests
are routed. What must hold: no request waits for the refit (past the short window in which a
small change is seen at once), the previous fit routes until the new one is ready, and the
refit ends in bounded time and memory. Measured against the same router's decisions before
the change, in one run.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from switchboard_lora.registry import BaseModelInfo, Registry, RegistrySettings
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.router import RegistryRoutes, Router
from switchboard_lora.trainer.synthetic import random_adapter

ROUTES = {
    "legal": ("contract", "tenant", "landlord", "lawsuit", "court", "liability", "statute"),
    "cooking": ("recipe", "oven", "flour", "simmer", "garlic", "bake", "sauce"),
    "sql": ("query", "table", "join", "index", "select", "column", "database"),
}
OPENERS = ("How do I", "What is the best way to", "Can you explain", "Why does", "Help me")
QUERIES = ("Can my landlord keep the deposit?", "How long do I bake bread?", "Join two tables")


def _texts(words: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    """`n` distinct requests about a route's words (numbered: all distinct)."""
    return [f"{rng.choice(OPENERS)} {' '.join(rng.sample(words, 3))} (case {i})" for i in range(n)]


def _decisions(router: Router) -> list[float]:
    """Seconds per decision over the queries, twenty times each."""
    seconds = []
    for query in QUERIES * 20:
        started = time.perf_counter()
        router.decide(query)
        seconds.append(time.perf_counter() - started)
    return seconds


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ms(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.median(samples)) * 1e3 if samples else 0.0,
        "max_ms": float(np.max(samples)) * 1e3 if samples else 0.0,
    }


def volume(encoder: Encoder, base: BaseModelInfo, examples: int) -> dict[str, Any]:
    rng = random.Random(20261203)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        registry = Registry(RegistrySettings(home=home).registry_url, home)
        for seed, (name, words) in enumerate(ROUTES.items()):
            adapter = random_adapter(base.path, home / "adapters" / name, seed=seed, rank=2)
            registry.publish(adapter, name, base)
            registry.routes.add_examples(name, _texts(words, 30, rng), "bench")
        router = Router(RegistryRoutes(registry), encoder, cache_dir=home / "embeddings")
        started = time.perf_counter()
        router.index()
        first_fit_s = time.perf_counter() - started
        before = _decisions(router)
        peak_before = _peak_mb()

        texts = _texts(ROUTES["legal"], examples, rng)
        started = time.perf_counter()
        registry.routes.add_examples("legal", texts, "bench")
        add_s = time.perf_counter() - started

        rebuilds = router.rebuilds
        changed = time.perf_counter()
        router.decide(QUERIES[0])  # starts the refit; waits its short window at most
        first_wait_s = time.perf_counter() - changed
        during: list[float] = []
        while router.rebuilds == rebuilds and time.perf_counter() - changed < 3600:
            started = time.perf_counter()
            router.decide(QUERIES[len(during) % len(QUERIES)])
            during.append(time.perf_counter() - started)
            time.sleep(0.05)
        refit_s = time.perf_counter() - changed
        after = _decisions(router)

        registry.routes.add_examples("sql", ["Which index speeds up this select?"], "bench")
        started = time.perf_counter()
        router.refresh()  # one more example beside 100,000 embedded: the fit alone
        small_refit_s = time.perf_counter() - started
        registry.close()
    return {
        "examples": examples,
        "first_fit_s": first_fit_s,
        "add_s": add_s,
        "refit_s": refit_s,
        "refit_wait_window_s": router.refit_wait_s,
        "first_request_wait_s": first_wait_s,
        "decisions_during_refit": len(during),
        "decision_before": _ms(before),
        "decision_during_refit": _ms(during),
        "decision_after": _ms(after),
        "small_change_refit_s": small_refit_s,
        "peak_rss_before_mb": peak_before,
        "peak_rss_after_mb": _peak_mb(),
    }


def print_volume(found: dict[str, Any]) -> None:
    before, during = found["decision_before"], found["decision_during_refit"]
    print(
        f"\nvolume: {found['examples']:,} examples added to one route of a live registry "
        f"in {found['add_s']:.1f} s; the refit took {found['refit_s']:.1f} s beside serving"
    )
    print(
        f"  decisions before: p50 {before['p50_ms']:.1f} ms; during the refit "
        f"({found['decisions_during_refit']}, by the previous fit): p50 {during['p50_ms']:.1f} "
        f"ms, max {during['max_ms']:.1f} ms ({during['p50_ms'] / max(before['p50_ms'], 1e-9):.2f}"
        f"x); the first request after the change waited {found['first_request_wait_s']:.2f} s "
        f"(window {found['refit_wait_window_s']:.0f} s)"
    )
    print(
        f"  after: p50 {found['decision_after']['p50_ms']:.1f} ms; one more example at this "
        f"size refits in {found['small_change_refit_s']:.1f} s; peak RSS "
        f"{found['peak_rss_before_mb']:.0f} MB before, {found['peak_rss_after_mb']:.0f} MB after"
    )
