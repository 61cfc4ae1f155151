"""The operator's console under a big registry: 1,000 adapter versions, 100,000 logged routing
decisions.

    python -m bench.console [--versions 1000] [--decisions 100000] [--repeat 15] [--home DIR]
        [--json]

A scratch registry gets `--versions` versions (10 adapters, real PEFT files, published
through the registry), `--decisions` logged decisions spread over the last 24 hours (written
through the decision log) and a running experiment with 2,000 exposures. A real server
(transformers engine, keys configured) then serves the console. Each page is fetched
`--repeat` times with the admin key, beside the admin API call that reads the same rows: the
ratio says what the page adds to the data. The first fetch of each page is reported apart
(nothing cached yet: the review page's chart counts a whole day then, and reuses ended hours'
counts after). Where Debian's Chromium is installed, each page is also loaded in it and its
load event timed (navigation start to load end). Target: every page ≤ 300 ms.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import track

from bench._common import HomeOption, default_base, run_benchmark
from switchboard_lora.registry import Registry
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.http.threaded import serve_in_thread
from switchboard_lora.serving.settings import ServerSettings
from switchboard_lora.trainer.synthetic import random_adapter

ADMIN = "bench-admin-key"
TARGET_MS = 300.0
ADAPTERS = 10
EXPOSURES = 2000  # of one running experiment, a third with feedback
# Each page, and the admin API call that reads the same rows (None: no such call).
PAGES: dict[str, str | None] = {
    "/console/adapters": "/v1/models",
    "/console/adapters/a0": "/v1/models",
    "/console/review": "/v1/admin/route-decisions?limit=50",
    "/console/review?order=newest&limit=200": "/v1/admin/route-decisions?limit=200",
    "/console/routes/a0": "/v1/admin/routes/a0/examples",
    "/console/experiments": None,
    "/console/live": None,
}
TEXTS = [
    "Solve for x: 3x + 7 = 22.",
    "List the customers whose orders exceed 100 dollars.",
    "Why does ice float on water?",
    "Tell me about your weekend plans.",
    "What is the tallest mountain in Europe?",
]


def _fill(registry: Registry, base: Any, scratch: Path, versions: int, decisions: int) -> None:
    adapter = random_adapter(base.path, scratch / "adapter", rank=1, modules=("q_proj",))
    for i in track(range(versions), description="publishing versions"):
        registry.publish(adapter, f"a{i % ADAPTERS}", base)
    for i in range(ADAPTERS):
        registry.set_alias(f"a{i}", "prod", 1)
    registry.routes.add_examples("a0", [f"{t} ({i})" for i, t in enumerate(TEXTS * 40)], "bench")
    experiment = registry.experiments.create("a1-ab", "a1", [("a1:1", 0.5), ("a1:2", 0.5)])
    rng = random.Random(0)
    for i in track(range(EXPOSURES), description="recording exposures"):
        arm = experiment.arms[i % 2]
        registry.experiments.record(f"r{i}", experiment, arm, rng.random(), 20, 30)
        if i % 3 == 0:
            registry.experiments.feedback(
                f"r{i}", thumbs_up=rng.random() < (0.5 if arm.position == 0 else 0.6)
            )
    routes = [f"a{i}" for i in range(ADAPTERS)] + ["base"]
    for _ in track(range(decisions), description="logging decisions"):
        route = rng.choice(routes)
        margin = rng.random() * 0.6
        scores = {route: 0.5 + margin / 2, rng.choice(routes): 0.5 - margin / 2}
        kind = "base" if route == "base" else "adapter"
        registry.decisions.record(rng.choice(TEXTS), kind, route, None, margin, scores)


def _spread_over_a_day(database_url: str, decisions: int) -> None:
    """The log was written in minutes; real traffic comes over hours: move each decision's
    time back by its share of 24 hours, so the page's chart has a day of hours to draw."""
    from sqlalchemy import create_engine, text

    now = datetime.now(UTC)
    with create_engine(database_url).begin() as conn:
        rows = conn.execute(text("select id from route_decisions")).scalars().all()
        for start in range(0, len(rows), 5000):
            batch = rows[start : start + 5000]
            conn.execute(
                text("update route_decisions set created_at = :at where id = :id"),
                [
                    {"id": i, "at": now - timedelta(hours=24 * (1 - (n + start) / decisions))}
                    for n, i in enumerate(batch)
                ],
            )


def _median_ms(fetch: Callable[[], httpx.Response], repeat: int) -> tuple[float, int, float]:
    """The median of `repeat` fetches after a first one, the size, and that first one's time
    (templates compiled, connections opened, nothing kept yet)."""
    start = time.perf_counter()
    fetch()
    cold = (time.perf_counter() - start) * 1000
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        answer = fetch()
        times.append((time.perf_counter() - start) * 1000)
        answer.raise_for_status()
        size = len(answer.content)
    return statistics.median(times), size, cold


def _browser_ms(url: str, paths: list[str], repeat: int, scratch: Path) -> dict[str, float]:
    """Each page's load in headless Chromium: navigation start to the load event's end."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        return {}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={scratch / 'chromium'}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        browser.get(f"{url}/console/login")
        browser.find_element("id", "key").send_keys(ADMIN)
        browser.find_element("css selector", "form.login button").click()
        time.sleep(1)
        found = {}
        for path in paths:
            times = []
            for _ in range(repeat + 1):
                browser.get(f"{url}{path}")
                timing = browser.execute_script(
                    "const t = performance.getEntriesByType('navigation')[0];"
                    "return t.loadEventEnd - t.startTime;"
                )
                times.append(float(timing))
            found[path] = statistics.median(times[1:])
        return found
    finally:
        browser.quit()


def main(
    versions: Annotated[int, typer.Option(help="Adapter versions in the registry.")] = 1000,
    decisions: Annotated[int, typer.Option(help="Logged routing decisions.")] = 100_000,
    repeat: Annotated[int, typer.Option(help="Fetches behind each median.")] = 15,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    base = default_base(home)
    scratch = Path(tempfile.mkdtemp(prefix="sb-bench-console-"))
    try:
        database_url = f"sqlite:///{scratch / 'registry.db'}"
        registry = Registry(database_url, scratch)
        started = time.perf_counter()
        _fill(registry, base, scratch, versions, decisions)
        registry.close()
        _spread_over_a_day(database_url, decisions)
        fill_s = time.perf_counter() - started
        settings = ServerSettings(
            home=scratch, base=str(base.path), engine="hf", admin_keys=[ADMIN], route_log="off"
        )
        headers = {"authorization": f"Bearer {ADMIN}"}
        rows: list[dict[str, Any]] = []
        with serve_in_thread(create_app(settings)) as url, httpx.Client(headers=headers) as http:
            for page, api in PAGES.items():
                page_ms, size, cold_ms = _median_ms(partial(http.get, f"{url}{page}"), repeat)
                api_ms = _median_ms(partial(http.get, f"{url}{api}"), repeat)[0] if api else None
                rows.append(
                    {
                        "page": page,
                        "server_ms": page_ms,
                        "first_ms": cold_ms,
                        "bytes": size,
                        "api": api,
                        "api_ms": api_ms,
                    }
                )
            loads = _browser_ms(url, list(PAGES), max(3, repeat // 3), scratch)
        for row in rows:
            row["browser_load_ms"] = loads.get(row["page"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    worst = max(max(r["server_ms"], r["first_ms"], r["browser_load_ms"] or 0) for r in rows)
    report = {
        "versions": versions,
        "decisions": decisions,
        "fill_s": fill_s,
        "pages": rows,
        "worst_ms": worst,
        "target_ms": TARGET_MS,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"{versions} versions, {decisions} decisions (filled in {fill_s:.0f} s); medians:")
    print(
        f"{'page':42} {'server ms':>10} {'first':>7} {'browser ms':>11} {'KB':>7}  "
        "API call, ms (ratio)"
    )
    for r in rows:
        load = f"{r['browser_load_ms']:.1f}" if r["browser_load_ms"] is not None else "-"
        api = (
            f"{r['api']} {r['api_ms']:.1f} ({r['server_ms'] / r['api_ms']:.1f}x)"
            if r["api_ms"]
            else "-"
        )
        print(
            f"{r['page']:42} {r['server_ms']:10.1f} {r['first_ms']:7.1f} {load:>11} "
            f"{r['bytes'] / 1000:7.0f}  {api}"
        )
    verdict = "met" if worst <= TARGET_MS else "MISSED"
    print(f"slowest page {worst:.1f} ms: target ≤ {TARGET_MS:.0f} ms {verdict}")


if __name__ == "__main__":
    run_benchmark(main)
