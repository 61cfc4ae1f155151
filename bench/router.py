"""Router benchmark: cross-source accuracy, few-shot intents, latency and scale.

    python -m bench.router [--part all|cross|intents|latency] [--sdist FILE] [--out DIR] [--json]

- cross: two cross-source sets, and each method's worst over them (defaults are chosen by
  the worst set). `demo`: routes are the demo domains' training requests (50 per domain, the
  sample the trainer stores in each manifest) plus 50 general negatives (`base`); test
  requests for the same domains come from *other* public tasks, phrased differently, plus
  general requests from tasks that belong to no domain. `paired`: nothing from the demo
  data; each route's examples come from one BIG-bench task and its test from another task of
  the same domain (chess, units, physics, dates, movies), general test requests from three
  more tasks. Every method is run uncalibrated and with per-route thresholds calibrated on
  the held-out split of the routes' own sources (never the test). Targets: accuracy >= 0.90,
  fallback recall >= 0.90, false fallback <= 0.05.
- intents: BIG-bench `intent_recognition` (SNIPS, 7 intents, no `base` examples): 10
  examples per intent are the routes, the rest the test, over three splits; each method with
  its default threshold and with none. Target: mean >= 0.95, never below centroid.
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
# A second cross-source set, none of it from the project's demo data: each route's examples
# come from one BIG-bench task and its test requests from another task of the same domain,
# phrased and formatted differently; general requests for the test from tasks of their own.
PAIRED_ROUTES: dict[str, tuple[str, str]] = {  # route -> (examples' task, test's task)
    "chess": ("checkmate_in_one", "chess_state_tracking/real_short"),
    "units": ("unit_conversion/si_conversion", "unit_interpretation/lv1"),
    "physics": ("physics", "physics_questions"),
    "dates": ("date_understanding", "temporal_sequences"),
    "movies": ("movie_recommendation", "emoji_movie"),
}
PAIRED_GENERAL = [
    ("simple_ethical_questions", 40),
    ("sports_understanding", 40),
    ("social_support", 40),
]
SNIPS_SPLITS = (1, 2, 3)  # seeds of the 10-shot splits
CROSS_TARGETS = "acc >= 0.90, fallback >= 0.90, false fb <= 0.05"
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
    if task == "sports_understanding":
        return f"Is this plausible? {text}"
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


def _add_negatives(
    tasks: Tasks, rng: random.Random, routes: list[dict[str, str]], held_out: list[dict[str, str]]
) -> None:
    """General requests: 50 as the routes' `base` examples, 100 for the calibration split."""
    negatives = sorted({r for t in NEGATIVE_SOURCES for r in tasks.requests(t, 100, rng)})
    negatives += tasks.requests("qa_wikidata", 40, rng)
    rng.shuffle(negatives)
    routes += [{"name": "base", "text": t} for t in negatives[:50]]
    held_out += [{"text": t, "expected": "base"} for t in negatives[50:150]]


def _write(
    out: Path,
    routes: list[dict[str, str]],
    held_out: list[dict[str, str]],
    test: list[dict[str, str]],
) -> tuple[Path, Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    return (
        _jsonl(out / "routes.jsonl", routes),
        _jsonl(out / "calibration.jsonl", held_out),
        _jsonl(out / "test.jsonl", test),
    )


def build_cross_source(tasks: Tasks, out: Path) -> tuple[Path, Path, Path]:
    """The demo domains: routes.jsonl, calibration.jsonl (held-out, same sources),
    test.jsonl (other sources)."""
    rng = random.Random(20261122)
    routes: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    for domain in DOMAINS:
        train = load_jsonl(DATA / domain / "train.jsonl").examples
        routes += [{"name": domain, "text": t} for t in routing_sample(train, 50, seed=0)]
        held = load_jsonl(DATA / domain / "eval.jsonl").examples
        held_out += [{"text": t, "expected": domain} for t in routing_sample(held, 100, seed=0)]
    _add_negatives(tasks, rng, routes, held_out)
    test = [
        {"text": text, "expected": label}
        for label, sources in TEST_SOURCES.items()
        for task, count in sources
        for text in tasks.requests(task, count, rng)
    ]
    return _write(out, routes, held_out, test)


def build_paired(tasks: Tasks, out: Path) -> tuple[Path, Path, Path]:
    """`PAIRED_ROUTES`: each route's examples and calibration split from one task, its test
    requests from another; general test requests from `PAIRED_GENERAL`."""
    rng = random.Random(20261124)
    routes: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for route, (source, target) in PAIRED_ROUTES.items():
        pool = tasks.requests(source, 150, rng)
        routes += [{"name": route, "text": t} for t in pool[:50]]
        held_out += [{"text": t, "expected": route} for t in pool[50:]]
        test += [{"text": t, "expected": route} for t in tasks.requests(target, 60, rng)]
    _add_negatives(tasks, rng, routes, held_out)
    test += [
        {"text": t, "expected": "base"}
        for task, count in PAIRED_GENERAL
        for t in tasks.requests(task, count, rng)
    ]
    return _write(out, routes, held_out, test)


CROSS_SETS = {"demo": build_cross_source, "paired": build_paired}


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


def _cross_rows(
    encoder: Encoder, routes: Path, held_out_file: Path, test_file: Path
) -> list[dict[str, Any]]:
    from router.files import read_labelled

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
    return rows


def cross_source(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    """Every method on every cross-source set, and each method's worst over the sets (what
    defaults are chosen by)."""
    sets: dict[str, list[dict[str, Any]]] = {}
    for name, build in CROSS_SETS.items():
        # The demo set's files stay at the top of `out`: --part latency reads its routes.
        sets[name] = _cross_rows(encoder, *build(tasks, out if name == "demo" else out / name))
    worst = []
    for i, row in enumerate(sets["demo"]):
        if row["thresholds"].startswith("held-out"):
            continue
        rows = [results[i] for results in sets.values()]
        worst.append(
            {
                "method": row["method"],
                "thresholds": row["thresholds"],
                "accuracy": min(r["accuracy"] for r in rows),
                "mean_accuracy": sum(r["accuracy"] for r in rows) / len(rows),
                "fallback_recall": min(r["fallback_recall"] for r in rows),
                "false_fallback_rate": max(r["false_fallback_rate"] for r in rows),
            }
        )
    return {"sets": sets, "worst": worst}


def _intent_split(
    by_intent: dict[str, list[str]], seed: int
) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """10 examples per intent as routes, the rest as the test."""
    rng = random.Random(seed)
    routes: list[dict[str, str]] = []
    test: list[tuple[str, str]] = []
    for intent, texts in sorted(by_intent.items()):
        shuffled = sorted(texts)
        rng.shuffle(shuffled)
        routes += [{"name": intent, "text": t} for t in shuffled[:10]]
        test += [(t, intent) for t in shuffled[10:]]
    return routes, test


def intents(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    """SNIPS 10-shot over `SNIPS_SPLITS`: no `base` examples and every test row has an intent,
    so any fallback is an error. Each method with its default threshold, and without one
    (pure classification)."""
    by_intent: dict[str, list[str]] = {}
    for example in tasks.inputs("intent_recognition"):
        scores = example["target_scores"]
        text = _request("intent_recognition", example["input"])
        if text:
            by_intent.setdefault(max(scores, key=scores.get), []).append(text)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in SNIPS_SPLITS:
        routes, test = _intent_split(by_intent, seed)
        routes_file = _jsonl(out / f"intent-routes-{seed}.jsonl", routes)
        for method in METHODS:
            for how, threshold in (("default", DEFAULT_THRESHOLD[method]), ("none", 0.0)):
                policy = Policy(threshold=threshold)
                report = evaluate(
                    Router(FileRoutes(routes_file), encoder, policy, method=method), test
                )
                rows.append(
                    {
                        "split": seed,
                        "method": method,
                        "thresholds": how,
                        "accuracy": report.accuracy,
                        "n": report.n,
                    }
                )
    return {"intents": len(by_intent), "splits": list(SNIPS_SPLITS), "results": rows}


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
        header = (
            f"{'method':9} {'thresholds':24} {'acc':>6} {'in-dom':>7} {'fb rec':>7} {'false fb':>8}"
        )
        for name, rows in results["cross"]["sets"].items():
            print(f"\ncross-source set {name!r} (targets: {CROSS_TARGETS})")
            print(header)
            for r in rows:
                print(
                    f"{r['method']:9} {r['thresholds']:24} {r['accuracy']:6.3f} "
                    f"{r['in_domain_accuracy']:7.3f} {r['fallback_recall']:7.3f} "
                    f"{r['false_fallback_rate']:8.3f}"
                )
        print("\nworst over the cross-source sets (what a default is chosen by)")
        print(
            f"{'method':9} {'thresholds':24} {'acc':>6} {'mean':>6} {'fb rec':>7} {'false fb':>8}"
        )
        for r in results["cross"]["worst"]:
            print(
                f"{r['method']:9} {r['thresholds']:24} {r['accuracy']:6.3f} "
                f"{r['mean_accuracy']:6.3f} {r['fallback_recall']:7.3f} "
                f"{r['false_fallback_rate']:8.3f}"
            )
    if "intents" in results:
        found = results["intents"]
        print(f"\nfew-shot intents, 10 examples per intent, splits {found['splits']}")
        print("(target: mean >= 0.95, never below centroid)")
        cells: dict[tuple[str, str], list[float]] = {}
        for r in found["results"]:
            cells.setdefault((r["method"], r["thresholds"]), []).append(r["accuracy"])
        for (method, how), values in cells.items():
            shown = "  ".join(f"{v:.3f}" for v in values)
            print(f"  {method:9} threshold {how:8} {shown}  mean {sum(values) / len(values):.3f}")
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
