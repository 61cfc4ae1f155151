"""`switchboard demo`: from nothing to a served multi-domain assistant, on the embedded defaults.

Pull the base (once); find the demo data (or build it); train and publish an adapter for each demo
domain, unless the domain's current version was trained on the same data with the same budget;
give the router's `base` route its general examples; serve in process over real HTTP; send mixed
requests with `model="auto"`, all at once; report what served each.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.registry.store import Registry, open_registry
from switchboard_lora.serving.settings import ServerSettings
from switchboard_lora.trainer.config import TrainConfig
from switchboard_lora.trainer.data import Dataset, load_jsonl
from switchboard_lora.trainer.loop import train_adapter

log = logging.getLogger(__name__)
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoBudget:
    steps: int  # training steps per domain
    batch_size: int
    eval_rows: int  # held-out rows measured before and after
    max_tokens: int  # per answer

    def config(self) -> TrainConfig:
        return TrainConfig(
            max_steps=self.steps,
            batch_size=self.batch_size,
            max_length=192,
            max_eval_examples=self.eval_rows,
            max_general_examples=0,
        )


FULL = DemoBudget(steps=30, batch_size=8, eval_rows=32, max_tokens=48)
QUICK = DemoBudget(steps=3, batch_size=4, eval_rows=8, max_tokens=32)


@dataclass(frozen=True)
class DemoRequest:
    text: str
    expected: str  # the domain it comes from, or "base" for a general request


@dataclass(frozen=True)
class DemoRow:
    request: DemoRequest
    route: str  # what served it: a ref, or "base"
    scores: dict[str, float]
    answer: str
    seconds: float

    @property
    def as_expected(self) -> bool:
        return self.route.split(":")[0] == self.request.expected

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request.text,
            "expected": self.request.expected,
            "route": self.route,
            "scores": self.scores,
            "answer": self.answer,
            "as_expected": self.as_expected,
            "seconds": round(self.seconds, 2),
        }


def demo_requests(data: Path) -> list[DemoRequest]:
    """The first held-out request of each domain, and three general questions."""
    requests = [
        DemoRequest(load_jsonl(data / d / "eval.jsonl").examples[0].request, d) for d in DOMAINS
    ]
    with (data / "general" / "knowledge.jsonl").open(encoding="utf-8") as f:
        questions = [json.loads(line)["question"] for line in f]
    return requests + [DemoRequest(q, BASE_ROUTE) for q in questions[:: len(questions) // 3][:3]]


def find_data(data: Path | None, settings: ServerSettings, say: Say) -> Path:
    """`data` if given; else ./data when it holds the demo domains; else build it in home."""
    from switchboard_lora.demo_data import bigbench_sdist, build

    def complete(folder: Path) -> bool:
        files = [folder / d / "train.jsonl" for d in DOMAINS]
        files += [folder / "general" / f for f in ("eval.jsonl", "knowledge.jsonl", "routes.jsonl")]
        return all(f.is_file() for f in files)

    if data is not None:
        if not complete(data):
            raise SwitchboardError(
                ErrorCode.NOT_FOUND, f"{data} lacks demo data (switchboard data build --out {data})"
            )
        return data
    for folder in (Path("data"), settings.home_dir / "data"):
        if complete(folder):
            return folder
    folder = settings.home_dir / "data"
    say(f"building the demo data in {folder} (BIG-bench sdist, 358 MB, once)")
    build(folder, bigbench_sdist(settings.home_dir))
    return folder


def current_match(
    registry: Registry, name: str, base: BaseModelInfo, dataset: Dataset, config: TrainConfig
) -> VersionInfo | None:
    """`name`'s current version if it was trained on `dataset` with `config`, on `base`."""
    current = registry.find(name)
    if current is None:
        return None
    manifest = registry.manifest(current.ref)
    same = (
        manifest.base.fingerprint == base.fingerprint
        and manifest.data.fingerprint == dataset.fingerprint
        and all(manifest.hyperparameters.get(k) == v for k, v in config.hyperparameters().items())
    )
    return current if same else None


def ensure_adapters(
    registry: Registry,
    base: BaseModelInfo,
    data: Path,
    budget: DemoBudget,
    say: Say,
    domains: Sequence[str] = DOMAINS,
) -> dict[str, str]:
    """Each domain's served ref: reused when its current version matches, else trained and
    published now (a new version, its parent the old one)."""
    import shutil
    import tempfile

    config = budget.config()
    refs = {}
    for i, domain in enumerate(domains, start=1):
        dataset = load_jsonl(data / domain / "train.jsonl").head(budget.steps * budget.batch_size)
        match = current_match(registry, domain, base, dataset, config)
        if match is not None:
            say(f"[{i}/{len(domains)}] {domain}: {match.ref} is trained on this budget; reused")
            refs[domain] = match.ref
            continue
        say(f"[{i}/{len(domains)}] {domain}: training {budget.steps} steps of {budget.batch_size}")
        out = Path(tempfile.mkdtemp(prefix=f"demo-{domain}-"))
        try:
            result = train_adapter(
                base, dataset, config, out, eval_data=load_jsonl(data / domain / "eval.jsonl")
            )
            current = registry.find(domain)
            parent = current.ref if current else None
            refs[domain] = registry.publish(out, domain, base, parent=parent).ref
        finally:
            shutil.rmtree(out, ignore_errors=True)
        m = result.metrics
        say(
            f"    published {refs[domain]}: held-out loss {m['eval_loss_before']:.2f} → "
            f"{m['eval_loss_after']:.2f} in {result.seconds:.0f} s"
        )
    return refs


def ask(url: str, requests: list[DemoRequest], max_tokens: int) -> list[DemoRow]:
    """Send every request at once (the engine batches them); greedy answers."""
    import httpx

    def one(request: DemoRequest) -> DemoRow:
        started = time.perf_counter()
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": request.text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        if response.status_code != 200:
            raise SwitchboardError(
                ErrorCode.UNAVAILABLE,
                f"the server answered {response.status_code}: {response.text[:300]}",
            )
        answer = response.json()
        served = answer["switchboard"]
        return DemoRow(
            request,
            served["served"]["ref"],
            served["scores"],
            answer["choices"][0]["message"]["content"],
            time.perf_counter() - started,
        )

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(one, requests))


def run_demo(
    settings: ServerSettings,
    *,
    quick: bool = False,
    data: Path | None = None,
    questions: list[str] | None = None,
    say: Say = log.info,
) -> dict[str, Any]:
    """Everything `switchboard demo` does; returns its report (rows, refs, seconds)."""
    from switchboard_lora.base_pull import pull
    from switchboard_lora.registry.bases import BaseModels
    from switchboard_lora.router.files import read_routes

    started = time.perf_counter()
    budget = QUICK if quick else FULL
    folder = find_data(data, settings, say)  # a bad --data fails before any long work
    bases = BaseModels(settings.bases_dir)
    try:
        base = bases.get(settings.base)
    except SwitchboardError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
        say(f"pulling the base model {settings.base} (once, about a minute)")
        base, _ = pull(bases, settings.base)
    registry = open_registry(settings)
    try:
        refs = ensure_adapters(registry, base, folder, budget, say)
        general = read_routes(folder / "general" / "routes.jsonl")[BASE_ROUTE]
        registry.routes.add_examples(BASE_ROUTE, general, "demo data")
    finally:
        registry.close()
    requests = [DemoRequest(q, "?") for q in questions] if questions else demo_requests(folder)
    say(f"serving in process ({settings.engine} engine); sending {len(requests)} requests")
    from switchboard_lora.serving.http.app import create_app  # the web stack, only now
    from switchboard_lora.serving.http.threaded import serve_in_thread

    with serve_in_thread(create_app(settings)) as url:
        rows = ask(url, requests, budget.max_tokens)
    return {
        "budget": "quick" if quick else "full",
        "adapters": refs,
        "rows": [r.to_json() for r in rows],
        "as_expected": sum(r.as_expected for r in rows) if not questions else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
