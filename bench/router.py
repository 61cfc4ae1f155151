"""Router benchmark: cross-source accuracy, few-shot intents, latency and scale.

    python -m bench.router [--part all|cross|intents|latency] [--sdist FILE] [--out DIR] [--json]

- cross: routes are the demo domains' training requests (50 per domain, the sample the
  trainer stores in each manifest) plus 50 general negatives (`base`); test requests for the
  same domains come from *other* public tasks, phrased differently, plus general requests
  from tasks that belong to no domain. Every method is run uncalibrated and with per-route
  thresholds calibrated on the domains' held-out split (same source as the routes, never
  the test). Targets: accuracy >= 0.90, fallback recall >= 0.90, false fallback <= 0.05.
- intents: BIG-bench `intent_recognition` (SNIPS, 7 intents): 10 examples per intent are
  the routes, the rest the test. Target >= 0.95.
- latency: p50/p99 of one decision for a short query; scoring time at 10, 1,000 and 10,000
  routes; the registry change check each decision makes.
Data: the `bigbench` sdist from PyPI (358 MB, downloaded once into $SWITCHBOARD_HOME/cache).
"""

from __future__ import annotations

import json
import random
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench._common import HomeOption
from registry import Registry, RegistrySettings
from router.decision import Policy
from router.encoder import Encoder
from router.evaluate import Report, calibrate, evaluate
from router.router import FileRoutes, Router
from router.scorers import DEFAULT_THRESHOLD, METHODS, CentroidScorer, LinearScorer
from switchboard.demo_data import BIGBENCH, DOMAINS, general_request
from switchboard.pypi import download
from trainer.data import load_jsonl
from trainer.loop import routing_sample

DATA = Path(__file__).resolve().parents[1] / "data"
TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"

# Test sources per domain: (task, how many, how a request is made from the task's input).
# Chosen for label validity: every request plainly belongs to its domain (e.g. numeric
# physics problems are left out of `science`: they are math word problems as much).
TEST_SOURCES: dict[str, list[tuple[str, int]]] = {
    "math": [
        ("arithmetic/2_digit_multiplication", 10),
        ("arithmetic/3_digit_subtraction", 10),
        ("arithmetic/2_digit_division", 10),
        ("chinese_remainder_theorem", 15),
        ("mathematical_induction", 15),
    ],
    "sql": [("semantic_parsing_in_context_sparc", 60)],
    "science": [
        ("natural_instructions/subtask047_misc_answering_science_questions", 30),
        ("periodic_elements/subtask_0", 7),
        ("periodic_elements/subtask_1", 8),
        ("physical_intuition", 15),
    ],
    "code": [("code_line_description", 30), ("auto_debugging", 30)],
    "dialogue": [("implicatures", 60)],
    "base": [
        ("known_unknowns", 20),
        ("riddle_sense", 20),
        ("intent_recognition", 30),
        ("movie_recommendation", 15),
        ("social_iqa", 20),
        ("english_proverbs", 15),
    ],
}
# Negatives for the routes and the calibration split: general requests from other tasks.
NEGATIVE_SOURCES = [
    "hhh_alignment/helpful",
    "hhh_alignment/harmless",
    "hhh_alignment/honest",
    "hhh_alignment/other",
]
_SPEAKER_1 = re.compile(r"Speaker 1: '(.*?)' Speaker 2")


def _request(task: str, text: str) -> str | None:
    """A task input as a user would send it (task framing removed)."""
    text = text.strip()
    if task == "implicatures":  # the first speaker's turn is the chit-chat request
        found = _SPEAKER_1.match(text)
        return found.group(1) if found else None
    if task.startswith("hhh_alignment"):
        return general_request(text)
    if task == "movie_recommendation":
        return f"Find a movie similar to {text.rstrip(':')}"
    return text.removeprefix("Question: ").removeprefix("Utterance: ").strip()


class Tasks:
    def __init__(self, sdist: Path) -> None:
        self.archive = tarfile.open(sdist)  # noqa: SIM115  (open for the whole run)

    def inputs(self, task: str) -> list[dict[str, Any]]:
        member = self.archive.extractfile(f"{TASKS}{task}/task.json")
        assert member is not None, task
        examples: list[dict[str, Any]] = json.load(member)["examples"]
        return examples

    def requests(self, task: str, count: int, rng: random.Random) -> list[str]:
        made = [_request(task, e["input"]) for e in self.inputs(task)]
        unique = sorted({" ".join(m.split()) for m in made if m})
        return rng.sample(unique, min(count, len(unique)))


def _jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_cross_source(tasks: Tasks, out: Path) -> tuple[Path, Path, Path]:
    """routes.jsonl, calibration.jsonl (held-out, same sources), test.jsonl (other sources)."""
    rng = random.Random(20261122)
    routes: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    for domain in DOMAINS:
        train = load_jsonl(DATA / domain / "train.jsonl").examples
        routes += [{"name": domain, "text": t} for t in routing_sample(train, 50, seed=0)]
        held = load_jsonl(DATA / domain / "eval.jsonl").examples
        held_out += [{"text": t, "expected": domain} for t in routing_sample(held, 100, seed=0)]
    negatives = sorted({r for t in NEGATIVE_SOURCES for r in tasks.requests(t, 100, rng)})
    negatives += tasks.requests("qa_wikidata", 40, rng)
    rng.shuffle(negatives)
    routes += [{"name": "base", "text": t} for t in negatives[:50]]
    held_out += [{"text": t, "expected": "base"} for t in negatives[50:150]]
    test = [
        {"text": text, "expected": label}
        for label, sources in TEST_SOURCES.items()
        for task, count in sources
        for text in tasks.requests(task, count, rng)
    ]
    out.mkdir(parents=True, exist_ok=True)
    return (
        _jsonl(out / "routes.jsonl", routes),
        _jsonl(out / "calibration.jsonl", held_out),
        _jsonl(out / "test.jsonl", test),
    )


def _row(method: str, how: str, report: Report) -> dict[str, Any]:
    return {
        "method": method,
        "thresholds": how,
        "accuracy": report.accuracy,
        "in_domain_accuracy": report.in_domain_accuracy,
        "fallback_recall": report.fallback_recall,
        "false_fallback_rate": report.false_fallback_rate,
        "n": report.n,
    }


def cross_source(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    from router.files import read_labelled

    routes, held_out_file, test_file = build_cross_source(tasks, out)
    held_out, test = read_labelled(held_out_file), read_labelled(test_file)
    rows = []
    for method in METHODS:
        policy = Policy(threshold=DEFAULT_THRESHOLD[method])
        plain = Router(FileRoutes(routes), encoder, policy, method=method)
        rows.append(_row(method, "default", evaluate(plain, test)))
        fitted = {r: t for r, (t, _) in calibrate(plain, held_out).items()}
        tuned = Router(FileRoutes(routes, fitted), encoder, policy, method=method)
        rows.append(_row(method, "calibrated", evaluate(tuned, test)))
        rows.append(_row(method, "held-out (same source)", evaluate(tuned, held_out)))
    return {"files": str(out), "results": rows}


def intents(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    by_intent: dict[str, list[str]] = {}
    for example in tasks.inputs("intent_recognition"):
        scores = example["target_scores"]
        text = _request("intent_recognition", example["input"])
        if text:
            by_intent.setdefault(max(scores, key=scores.get), []).append(text)
    rng = random.Random(7)
    routes, test = [], []
    for intent, texts in sorted(by_intent.items()):
        rng.shuffle(texts)
        routes += [{"name": intent, "text": t} for t in texts[:10]]
        test += [{"text": t, "expected": intent} for t in texts[10:]]
    out.mkdir(parents=True, exist_ok=True)
    routes_file = _jsonl(out / "intent-routes.jsonl", routes)
    rows = []
    for method in METHODS:  # every test row has an intent: no threshold, pure classification
        router = Router(FileRoutes(routes_file), encoder, Policy(threshold=0.0), method=method)
        report = evaluate(router, [(r["text"], r["expected"]) for r in test])
        rows.append({"method": method, "accuracy": report.accuracy, "n": report.n})
    return {"intents": len(by_intent), "routes": len(routes), "results": rows}


def _timings(fn: Any, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)) * 1e3, float(np.percentile(samples, 99)) * 1e3


def latency(encoder: Encoder, out: Path) -> dict[str, Any]:
    routes = out / "routes.jsonl"
    router = Router(FileRoutes(routes), encoder)
    query = "What is 17 times 23?"
    router.decide(query)
    p50, p99 = _timings(lambda: router.decide(query), 300)
    encode50, _ = _timings(lambda: encoder.encode([query]), 300)
    with tempfile.TemporaryDirectory() as home:
        registry = Registry(RegistrySettings(home=Path(home)).registry_url, Path(home))
        registry.routes.add_examples("base", ["hello"], "bench")
        state50, state99 = _timings(registry.routes.state, 300)
        registry.close()
    rng = np.random.default_rng(0)
    query_vector = encoder.encode([query])
    scale = []
    for n in (10, 1_000, 10_000):
        weights = rng.standard_normal((n, encoder.dim)).astype(np.float32)
        linear = LinearScorer.from_weights([f"r{i}" for i in range(n)], weights, np.zeros(n))
        centroid = CentroidScorer()
        centroid.fit(weights / np.linalg.norm(weights, axis=1, keepdims=True), linear.classes)
        lin50, lin99 = _timings(lambda s=linear: s.scores(query_vector), 500)
        cen50, _ = _timings(lambda s=centroid: s.scores(query_vector), 500)
        scale.append(
            {"routes": n, "linear_p50_ms": lin50, "linear_p99_ms": lin99, "centroid_p50_ms": cen50}
        )
    fit = []
    for n in (10, 100):  # refit cost of a registry change, 20 examples per route
        centres = rng.standard_normal((n, encoder.dim)).astype(np.float32)
        vectors = np.repeat(centres, 20, axis=0) + rng.standard_normal((20 * n, encoder.dim))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        labels = [f"r{i}" for i in range(n) for _ in range(20)]
        start = time.perf_counter()
        LinearScorer().fit(vectors.astype(np.float32), labels)
        fit.append({"routes": n, "linear_fit_s": time.perf_counter() - start})
    return {
        "decision_p50_ms": p50,
        "decision_p99_ms": p99,
        "encode_p50_ms": encode50,
        "registry_check_p50_ms": state50,
        "registry_check_p99_ms": state99,
        "scoring": scale,
        "refit": fit,
    }


def _print(results: dict[str, Any]) -> None:
    if "cross" in results:
        print("\ncross-source routing (targets: acc >= 0.90, fallback >= 0.90, false fb <= 0.05)")
        print(
            f"{'method':9} {'thresholds':24} {'acc':>6} {'in-dom':>7} {'fb rec':>7} {'false fb':>8}"
        )
        for r in results["cross"]["results"]:
            print(
                f"{r['method']:9} {r['thresholds']:24} {r['accuracy']:6.3f} "
                f"{r['in_domain_accuracy']:7.3f} {r['fallback_recall']:7.3f} "
                f"{r['false_fallback_rate']:8.3f}"
            )
    if "intents" in results:
        print("\nfew-shot intents, 10 examples per intent (target >= 0.95)")
        for r in results["intents"]["results"]:
            print(f"  {r['method']:9} accuracy {r['accuracy']:.3f} (n={r['n']})")
    if "latency" in results:
        lat = results["latency"]
        print(
            f"\none decision, short query: p50 {lat['decision_p50_ms']:.2f} ms, "
            f"p99 {lat['decision_p99_ms']:.2f} ms (encoding alone p50 {lat['encode_p50_ms']:.2f})"
        )
        print(
            f"registry change check (SQLite): p50 {lat['registry_check_p50_ms']:.3f} ms, "
            f"p99 {lat['registry_check_p99_ms']:.3f} ms"
        )
        for s in lat["scoring"]:
            print(
                f"scoring {s['routes']:>6} routes: linear p50 {s['linear_p50_ms']:.3f} ms "
                f"(p99 {s['linear_p99_ms']:.3f}), centroid p50 {s['centroid_p50_ms']:.3f} ms"
            )
        for f in lat["refit"]:
            print(f"refit after a change, {f['routes']} routes: {f['linear_fit_s']:.2f} s")


def main(
    part: Annotated[str, typer.Option(help="all, cross, intents or latency")] = "all",
    sdist: Annotated[Path | None, typer.Option(help="The bigbench sdist, if at hand.")] = None,
    out: Annotated[Path, typer.Option(help="Where the built test files go.")] = Path(
        "bench-router-data"
    ),
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    cache = (RegistrySettings() if home is None else RegistrySettings(home=home)).home_dir
    encoder = Encoder()
    results: dict[str, Any] = {"encoder": str(encoder.path)}
    if part in ("all", "cross", "intents"):
        tasks = Tasks(sdist or download(BIGBENCH, cache / "cache", sdist=True))
        if part in ("all", "cross"):
            results["cross"] = cross_source(encoder, tasks, out)
        if part in ("all", "intents"):
            results["intents"] = intents(encoder, tasks, out)
    if part in ("all", "latency"):
        if not (out / "routes.jsonl").exists():
            sys.exit("latency needs the routes file: run --part cross first")
        results["latency"] = latency(encoder, out)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    typer.run(main)
