"""Router benchmark: cross-source accuracy, few-shot intents, latency and scale.

    python -m bench.router [--part all|cross|intents|loop|scale|volume|latency|encoders]
                           [--encoder NAME|DIR] [--encoder-device cpu|cuda] [--out DIR] [--json]

- cross: the cross-source sets of `bench/router_sets.py` (demo, paired, styles, and `chat`,
  held out: reported apart, never used to choose), and each method's worst over the others
  (defaults are chosen by the worst set). In each, the routes' examples come from one source
  and the test requests for the same routes from others, phrased differently, plus general
  requests that belong to no route. Every method is run uncalibrated, with per-route
  thresholds calibrated on the held-out split of the routes' own sources (never the test), and
  with route descriptions beside the examples; linear also with 5 examples per route, with and
  without descriptions.
  Targets: accuracy >= 0.90, fallback recall >= 0.90, false fallback <= 0.05.
- intents: BIG-bench `intent_recognition` (SNIPS, 7 intents, no `base` examples): 10
  examples per intent are the routes, the rest the test, over three splits; each method with
  its default threshold and with none. Target: mean >= 0.95, never below centroid.
- loop: the review loop simulated on every cross-source set: each round labels the 5 most
  uncertain requests per route they went to; accuracy against labels spent, and a plot.
  Target: >= 0.97 with <= 20 labels per route.
- scale: 100 and 1,000 BIG-bench domain tasks as routes, 20 requests each
  (`bench/router_scale.py`): held-out requests of the routes, fallback recall on general
  requests, decision time, a full fit, and the refit after adding one route (from the last
  fit, against a fit from nothing). It runs `volume` too.
- volume: 100,000 examples (`--examples N`) added at once to one route of a live registry
  while requests are routed (`bench/router_volume.py`): how long the refit takes beside
  serving, decision times before, during (the previous fit routes) and after, the first
  request's wait, a small change's refit at that size, peak memory. Needs no BIG-bench.
- encoders: the default encoder and each one `switchboard encoder pull` knows, on every
  cross-source set and SNIPS, side by side, with one request's encoding time.
- latency: p50/p99 of one decision for a short and a long (~130-token) query, and of encoding
  them; scoring time at 10, 1,000 and 10,000 routes; the registry change check each decision
  makes.
`--encoder NAME|DIR` and `--encoder-device cuda` run every part but `encoders` with another
encoder, or on a GPU.
Data: the `bigbench` 1.0.0 sdist (358 MB): `--sdist FILE`, or pip downloads it once into
$SWITCHBOARD_HOME/downloads where its index still has it.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench._common import HomeOption, default_base, pulled_encoder, run_benchmark
from bench.router_scale import scale
from bench.router_sets import (
    HELD_OUT,
    SET_NAMES,
    Tasks,
    build,
    descriptions,
    jsonl,
    request_from,
)
from bench.router_volume import print_volume, volume
from switchboard_lora.demo_data import bigbench_sdist
from switchboard_lora.registry import Registry, RegistrySettings
from switchboard_lora.router.decision import Policy
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.encoder_cache import DEFAULT_ENCODER
from switchboard_lora.router.evaluate import Report, calibrate, evaluate
from switchboard_lora.router.router import FileRoutes, Route, Router
from switchboard_lora.router.scorers import DEFAULT_THRESHOLD, METHODS, CentroidScorer, LinearScorer

SNIPS_SPLITS = (1, 2, 3)  # seeds of the 10-shot splits
CROSS_TARGETS = "acc >= 0.90, fallback >= 0.90, false fb <= 0.05"


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


class MemoEncoder(Encoder):
    """The encoder, each text encoded once per run: the benchmark builds many routers over
    the same texts, and what it measures is routing, not encoding (timed apart, in latency)."""

    def __init__(self, model_dir: Path | None = None, device: str = "cpu") -> None:
        super().__init__(model_dir, device)
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        self._memo.update(zip(missing, super().encode(missing), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])


FEW_SHOT = 5  # examples per route in the few-shot rows (`base` keeps all its examples)


def _few_shot(routes: Path) -> Path:
    """The routes file cut to `FEW_SHOT` examples per route."""
    kept: dict[str, int] = {}
    rows = []
    for line in routes.read_text().splitlines():
        row = json.loads(line)
        kept[row["name"]] = kept.get(row["name"], 0) + 1
        if row["name"] == "base" or kept[row["name"]] <= FEW_SHOT:
            rows.append(row)
    return jsonl(routes.with_name("few-shot-routes.jsonl"), rows)


def _cross_rows(
    encoder: Encoder, name: str, routes: Path, held_out_file: Path, test_file: Path
) -> list[dict[str, Any]]:
    from switchboard_lora.router.files import read_labelled

    held_out, test = read_labelled(held_out_file), read_labelled(test_file)
    described = descriptions(name)
    rows = []
    for method in METHODS:
        policy = Policy(threshold=DEFAULT_THRESHOLD[method])
        plain = Router(FileRoutes(routes), encoder, policy, method=method)
        rows.append(_row(method, "default", evaluate(plain, test)))
        fitted = {r: t for r, (t, _) in calibrate(plain, held_out).items()}
        tuned = Router(FileRoutes(routes, fitted), encoder, policy, method=method)
        rows.append(_row(method, "calibrated", evaluate(tuned, test)))
        rows.append(_row(method, "held-out (same source)", evaluate(tuned, held_out)))
        with_text = Router(FileRoutes(routes, None, described), encoder, policy, method=method)
        rows.append(_row(method, "default + descriptions", evaluate(with_text, test)))
    few = _few_shot(routes)
    for how, texts in ((f"{FEW_SHOT} examples", None), (f"{FEW_SHOT} + descriptions", described)):
        router = Router(FileRoutes(few, None, texts), encoder)
        rows.append(_row("linear", how, evaluate(router, test)))
    return rows


def cross_source(encoder: Encoder, tasks: Tasks, out: Path) -> dict[str, Any]:
    """Every method on every cross-source set, and each method's worst over the sets that
    choose defaults (all but `HELD_OUT`, which is reported apart)."""
    sets: dict[str, list[dict[str, Any]]] = {}
    for name in SET_NAMES:
        # The demo set's files stay at the top of `out`: --part latency reads its routes.
        files = build(name, tasks, out if name == "demo" else out / name)
        sets[name] = _cross_rows(encoder, name, *files)
    worst = []
    for i, row in enumerate(sets["demo"]):
        if row["thresholds"].startswith("held-out"):
            continue
        rows = [results[i] for name, results in sets.items() if name != HELD_OUT]
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
    return {"sets": sets, "worst": worst, "held_out_set": HELD_OUT}


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
        text = request_from("intent_recognition", example["input"])
        if text:
            by_intent.setdefault(max(scores, key=scores.get), []).append(text)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in SNIPS_SPLITS:
        routes, test = _intent_split(by_intent, seed)
        routes_file = jsonl(out / f"intent-routes-{seed}.jsonl", routes)
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


class _LabelledRoutes:
    """A routes file plus labels given so far (a route source whose state moves with them)."""

    def __init__(self, path: Path) -> None:
        self.file = FileRoutes(path)
        self.labels: list[tuple[str, str]] = []

    def state(self) -> Hashable:
        return len(self.labels)

    def resolve(self, ref: str) -> Any:
        return self.file.resolve(ref)

    def load(self, scores_key: str) -> list[Route]:
        extra: dict[str, list[str]] = {}
        for text, route in self.labels:
            extra.setdefault(route, []).append(text)
        return [
            Route(r.name, r.target, (), (*r.extra_examples, *extra.get(r.name, ())))
            for r in self.file.load(scores_key)
        ]


def review_loop(
    encoder: Encoder, tasks: Tasks, out: Path, rounds: int = 4, per_route: int = 5
) -> dict[str, Any]:
    """The review loop, simulated: each round routes a set's whole test stream, then labels
    the `per_route` most uncertain unlabelled requests per route they went to (with their true
    route, as an operator would), which become examples. Accuracy on the whole stream and on
    the requests not labelled yet, against labels spent."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in SET_NAMES:
        routes, _, test_file = build(name, tasks, out / "loop" / name)
        from switchboard_lora.router.files import read_labelled

        test = read_labelled(test_file)
        source = _LabelledRoutes(routes)
        router = Router(source, encoder)
        labelled: set[int] = set()
        curve = []
        for round_ in range(rounds + 1):
            decisions = router.decide_texts([t for t, _ in test])
            right = [d.route == expected for d, (_, expected) in zip(decisions, test, strict=True)]
            rest = [ok for i, ok in enumerate(right) if i not in labelled]
            curve.append(
                {
                    "round": round_,
                    "labels": len(labelled),
                    "labels_per_route": len(labelled) / max(len(router.routes), 1),
                    "accuracy": sum(right) / len(right),
                    "unlabelled_accuracy": sum(rest) / max(len(rest), 1),
                }
            )
            if round_ == rounds:
                break
            by_route: dict[str, list[tuple[float, int]]] = {}
            for i, d in enumerate(decisions):
                if i not in labelled:
                    margin = d.margin if d.margin is not None else float("inf")
                    by_route.setdefault(d.route, []).append((margin, i))
            for candidates in by_route.values():
                for _, i in sorted(candidates)[:per_route]:
                    labelled.add(i)
                    source.labels.append(test[i])
        curves[name] = curve
    plot = out / "review-loop.png"
    _plot_loop(curves, plot)
    return {"rounds": rounds, "per_route": per_route, "curves": curves, "plot": str(plot)}


def _plot_loop(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        held = " (held out)" if name == HELD_OUT else ""
        ax.plot(
            [c["labels_per_route"] for c in curve],
            [c["accuracy"] for c in curve],
            marker="o",
            label=name + held,
        )
    ax.axhline(0.97, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("labels spent per route")
    ax.set_ylabel("accuracy on the whole stream")
    ax.set_title("Review loop: per round, the 5 most uncertain\nrequests per route labelled")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


ENCODERS = (DEFAULT_ENCODER, "all-mpnet-base-v2")  # the default, and what a pull adds
SHORT_QUERY = "What is 17 times 23?"
LONG_QUERY = " ".join(["Explain, step by step, how the rate of a reaction changes with heat."] * 8)


def compare_encoders(tasks: Tasks, out: Path, home: Path | None) -> dict[str, Any]:
    """Every encoder of `ENCODERS` on every cross-source set and on SNIPS, side by side (the
    same sets, splits and methods), with what one request's encoding costs."""
    rows = []
    for name in ENCODERS:
        path = pulled_encoder(name, home)
        memo = MemoEncoder(path)
        cross = cross_source(memo, tasks, out / "encoders" / name)
        snips = intents(memo, tasks, out / "encoders" / name)["results"]
        timed = Encoder(path)  # timed: no memo
        timed.encode([SHORT_QUERY])
        short50, _ = _timings(lambda e=timed: e.encode([SHORT_QUERY]), 100)
        long50, _ = _timings(lambda e=timed: e.encode([LONG_QUERY]), 30)
        for worst in cross["worst"]:
            if worst["thresholds"] not in ("default", "default + descriptions"):
                continue
            key = (worst["method"], worst["thresholds"])
            per_set = {
                set_name: next(r["accuracy"] for r in rows if (r["method"], r["thresholds"]) == key)
                for set_name, rows in cross["sets"].items()
            }
            split = [
                r["accuracy"]
                for r in snips
                if (r["method"], r["thresholds"]) == (worst["method"], "default")
            ]
            rows.append(
                {
                    "encoder": name,
                    "dim": memo.dim,
                    "method": worst["method"],
                    "thresholds": worst["thresholds"],
                    "worst_accuracy": worst["accuracy"],
                    "mean_accuracy": worst["mean_accuracy"],
                    "worst_fallback_recall": worst["fallback_recall"],
                    "held_out_accuracy": per_set[HELD_OUT],
                    "per_set": per_set,
                    "snips": split,
                    "encode_short_p50_ms": short50,
                    "encode_long_p50_ms": long50,
                }
            )
    return {"encoders": list(ENCODERS), "rows": rows}


def _per_set(figures: dict[str, float]) -> str:
    return ", ".join(f"{value:.3f} ({name})" for name, value in figures.items())


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
    query = SHORT_QUERY
    router.decide(query)
    p50, p99 = _timings(lambda: router.decide(query), 300)
    encode50, _ = _timings(lambda: encoder.encode([query]), 300)
    long50, long99 = _timings(lambda: router.decide(LONG_QUERY), 100)
    encode_long50, _ = _timings(lambda: encoder.encode([LONG_QUERY]), 100)
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
        "long_decision_p50_ms": long50,
        "long_decision_p99_ms": long99,
        "long_encode_p50_ms": encode_long50,
        "long_tokens": encoder.prepare(LONG_QUERY).tokens,
        "encoder_device": str(encoder.model.device),
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
            held = " (held out: not used to choose)" if name == HELD_OUT else ""
            print(f"\ncross-source set {name!r}{held} (targets: {CROSS_TARGETS})")
            print(header)
            for r in rows:
                print(
                    f"{r['method']:9} {r['thresholds']:24} {r['accuracy']:6.3f} "
                    f"{r['in_domain_accuracy']:7.3f} {r['fallback_recall']:7.3f} "
                    f"{r['false_fallback_rate']:8.3f}"
                )
        print(f"\nworst over the cross-source sets but {HELD_OUT!r} (what a default is chosen by)")
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
    if "loop" in results:
        loop = results["loop"]
        print(
            f"\nreview loop: per round, the {loop['per_route']} most uncertain requests per "
            f"route labelled (target: >= 0.97 with <= 20 per route); plot {loop['plot']}"
        )
        rounds = range(loop["rounds"] + 1)
        print(f"{'set':10} " + " ".join(f"{'round ' + str(r):>14}" for r in rounds))
        for name, curve in loop["curves"].items():
            points = " ".join(f"{c['accuracy']:.3f} ({c['labels_per_route']:4.1f})" for c in curve)
            print(f"{name:10} {points}")
        print("(accuracy on the whole stream; in brackets, labels spent per route)")
    if "volume" in results:
        print_volume(results["volume"])
    if "scale" in results:
        found = results["scale"]
        print(
            f"\nscale: BIG-bench tasks as routes, {found['per_route']} requests each "
            f"({found['qualifying_tasks']} domain tasks qualify); general requests must still "
            "go to base"
        )
        for r in found["results"]:
            print(
                f"  {r['routes']:>5} routes: own held-out requests {r['accuracy']:.3f} "
                f"(to base {r['false_fallback_rate']:.3f}), fallback recall "
                f"{_per_set(r['fallback_recall'])}, decision p50 {r['decision_p50_ms']:.1f} ms, "
                f"full fit {r['refit_s']:.1f} s ({r['refit_iterations']} iterations)"
            )
            print(
                f"        one route added: refit from the last fit {r['add_one_s']:.2f} s "
                f"({r['add_one_iterations']} it.) vs from nothing {r['add_one_cold_s']:.2f} s "
                f"({r['add_one_cold_iterations']} it.): "
                f"{r['add_one_cold_s'] / max(r['add_one_s'], 1e-9):.1f}x; decisions agree "
                f"{r['add_one_agreement']:.3f}"
            )
            print(f"        general requests went to: {r['general_went_to']}")
            sweep = ", ".join(
                f"{g['threshold']}: {g['fallback_recall']:.2f} / {g['false_fallback_rate']:.2f}"
                for g in r["gate_sweep"]
            )
            print(f"        gate threshold: fallback recall / false fallback: {sweep}")
    if "encoders" in results:
        print(
            "\nencoders side by side, per cross-source set; worst and mean over the sets but "
            f"{HELD_OUT!r} (held out); worst fallback recall; SNIPS per split (default "
            "threshold); encoding one request, p50 ms (short / ~130 tokens)"
        )
        for r in results["encoders"]["rows"]:
            sets = " ".join(f"{n} {a:.3f}" for n, a in r["per_set"].items())
            snips = " ".join(f"{a:.3f}" for a in r["snips"])
            print(
                f"  {r['encoder']:18} {r['method']:8} {r['thresholds']:22} {sets}  "
                f"worst {r['worst_accuracy']:.3f} mean {r['mean_accuracy']:.3f}  "
                f"fb {r['worst_fallback_recall']:.3f}  SNIPS {snips}  "
                f"{r['encode_short_p50_ms']:.1f} / {r['encode_long_p50_ms']:.1f} ms"
            )
    if "latency" in results:
        lat = results["latency"]
        print(
            f"\none decision, short query: p50 {lat['decision_p50_ms']:.2f} ms, "
            f"p99 {lat['decision_p99_ms']:.2f} ms (encoding alone p50 {lat['encode_p50_ms']:.2f}); "
            f"{lat['long_tokens']}-token query: p50 {lat['long_decision_p50_ms']:.2f} ms, "
            f"p99 {lat['long_decision_p99_ms']:.2f} ms (encoding alone "
            f"p50 {lat['long_encode_p50_ms']:.2f}); encoder on {lat['encoder_device']}"
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
    part: Annotated[
        str, typer.Option(help="all, cross, intents, loop, scale, volume, latency or encoders")
    ] = "all",
    sdist: Annotated[Path | None, typer.Option(help="The bigbench sdist, if at hand.")] = None,
    out: Annotated[Path, typer.Option(help="Where the built test files go.")] = Path(
        "bench-router-data"
    ),
    home: HomeOption = None,
    encoder_name: Annotated[
        str,
        typer.Option(
            "--encoder",
            help="A pulled (or pullable) encoder's name or a directory, for every "
            "part but `encoders`.",
        ),
    ] = DEFAULT_ENCODER,
    encoder_device: Annotated[str, typer.Option(help="Where the encoder runs: cpu, cuda.")] = "cpu",
    examples: Annotated[
        int, typer.Option(help="Route examples added at once in scale's volume run.")
    ] = 100_000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    cache = (RegistrySettings() if home is None else RegistrySettings(home=home)).home_dir
    path = pulled_encoder(encoder_name, home)
    results: dict[str, Any] = {"encoder": str(path), "encoder_device": encoder_device}
    if part in ("all", "cross", "intents", "loop", "scale", "encoders"):
        tasks = Tasks(sdist or bigbench_sdist(cache))
        encoder = MemoEncoder(path, encoder_device)
        if part in ("all", "cross"):
            results["cross"] = cross_source(encoder, tasks, out)
        if part in ("all", "intents"):
            results["intents"] = intents(encoder, tasks, out)
        if part in ("all", "loop"):
            results["loop"] = review_loop(encoder, tasks, out)
        if part in ("all", "scale"):
            # decisions timed: no memo
            results["scale"] = scale(Encoder(path, encoder_device), tasks, out)
        if part in ("all", "encoders"):
            results["encoders"] = compare_encoders(tasks, out, home)
    if part in ("all", "scale", "volume"):  # no BIG-bench: `--part volume` runs it alone
        results["volume"] = volume(Encoder(path, encoder_device), default_base(home), examples)
    if part in ("all", "latency"):
        if not (out / "routes.jsonl").exists():
            sys.exit("latency needs the routes file: run --part cross first")
        results["latency"] = latency(Encoder(path, encoder_device), out)  # timed: no memo
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_benchmark(main)
