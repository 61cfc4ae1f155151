"""Router benchmark: routing on traffic nobody wrote it for, many routes, the review loop,
encoders, latency and volume. Reads committed extracts only (`bench/router_sets.py`).

    python -m bench.router [--part all|sets|routes|loop|encoders|latency|volume]
                           [--encoder NAME|DIR] [--encoder-device cpu|cuda] [--out DIR] [--json]

- sets: every set of `bench/router_sets.py` (the demo's domains with and without `base`
  examples, CLINC's domains with unseen domains as out-of-scope over five folds, and
  `banking77+oos`, held out: reported apart, never used to choose). Each method at the default
  gate; linear also with the gate's threshold swept, without the shipped general requests
  (the gate as it was before them), calibrated on the same-source held-out split and with
  descriptions where the set has them. Then each row's worst over the sets that choose.
  Targets: accuracy >= 0.93, fallback recall >= 0.90 (>= 0.85 with no `base` examples),
  false fallback <= 0.05.
- routes: CLINC's intents (10, 50, 150) and banking77's (10, 50, 77) as routes, 10 examples
  each: accuracy on their test requests, the share sent to base, general requests (BIG-Bench
  Hard's) sent to base, decision p50, a full fit and the refit after adding one route.
- loop: the review loop simulated on every set: each round labels the 5 most uncertain
  requests per route they went to (with their true route, `base` included); labels refit the
  scorer and the gate. Accuracy and fallback recall against labels spent, and a plot.
  Target: >= 0.97 with <= 20 labels per route.
- encoders: the default encoder and each one `switchboard encoder pull` knows, on every set,
  side by side, with one request's encoding time (`--part all` skips one not pulled yet:
  it downloads nothing; `--part encoders` pulls it).
- regret: routing judged by its answers, on the demo's five adapters (trained once, as the
  demo trains them; `bench/router_regret.py`): regret against the best single choice per
  request, harm to the requests the base answers best, a top-2 mix, routing by label.
- latency: p50/p99 of one decision for a short and a long (~130-token) query, and of encoding
  them; scoring time at 10, 1,000 and 10,000 routes; the registry change check.
- volume: 100,000 examples (`--examples N`) added at once to one route of a live registry
  while requests are routed (`bench/router_volume.py`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench._common import HomeOption, default_base, pulled_encoder, run_benchmark
from bench.router_regret import regret
from bench.router_sets import HELD_OUT, RouteSet, extract, intent_routes, route_sets
from bench.router_volume import print_volume, volume
from switchboard_lora.registry import Registry, RegistrySettings
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.router.decision import Policy, RouteTarget
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.encoder_cache import DEFAULT_ENCODER
from switchboard_lora.router.evaluate import Report, calibrate, evaluate
from switchboard_lora.router.router import FileRoutes, Route, Router
from switchboard_lora.router.scorers import METHODS, CentroidScorer, LinearScorer

SWEEP = (0.85, 0.95)  # gate thresholds beside the default: what a stricter or looser one trades
TARGETS = "acc >= 0.93, fallback >= 0.90 (0.85 without base examples), false fb <= 0.05"


class MemoEncoder(Encoder):
    """The encoder, each text encoded once per run: the benchmark builds many routers over
    the same texts, and what it measures is routing, not encoding (timed apart, in latency)."""

    def __init__(self, model_dir: Path | None = None, device: str = "cpu") -> None:
        super().__init__(model_dir, device)
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            self._memo.update(zip(missing, super().encode(missing), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])


def _row(method: str, how: str, report: Report) -> dict[str, Any]:
    return {
        "method": method,
        "gate": how,
        "accuracy": report.accuracy,
        "in_domain_accuracy": report.in_domain_accuracy,
        "fallback_recall": report.fallback_recall,
        "false_fallback_rate": report.false_fallback_rate,
        "n": report.n,
    }


def _set_rows(encoder: Encoder, found: RouteSet, out: Path) -> list[dict[str, Any]]:
    routes, _ = found.write(out / found.name)
    rows = []
    for method in METHODS:
        router = Router(FileRoutes(routes), encoder, method=method)
        rows.append(_row(method, "default", evaluate(router, found.test)))
    for threshold in SWEEP:
        router = Router(FileRoutes(routes), encoder, Policy(threshold))
        rows.append(_row("linear", f"threshold {threshold}", evaluate(router, found.test)))
    plain = Router(FileRoutes(routes), encoder, general=False)
    rows.append(_row("linear", "no general requests", evaluate(plain, found.test)))
    if found.calibration:
        fitted = {
            r: t
            for r, (t, _) in calibrate(
                Router(FileRoutes(routes), encoder), found.calibration
            ).items()
        }
        tuned = Router(FileRoutes(routes, fitted), encoder)
        rows.append(_row("linear", "calibrated", evaluate(tuned, found.test)))
    if found.descriptions:
        described = Router(FileRoutes(routes, None, found.descriptions), encoder)
        rows.append(_row("linear", "+ descriptions", evaluate(described, found.test)))
    return rows


def _worst(sets: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row (method and gate), its worst figures over the sets that choose defaults."""
    chosen = [rows for name, rows in sets.items() if name != HELD_OUT]
    keys = [(r["method"], r["gate"]) for r in chosen[0]]
    worst = []
    for key in keys:
        rows = [r for results in chosen for r in results if (r["method"], r["gate"]) == key]
        fallback = [r["fallback_recall"] for r in rows if r["fallback_recall"] is not None]
        worst.append(
            {
                "method": key[0],
                "gate": key[1],
                "sets": len(rows),
                "accuracy": min(r["accuracy"] for r in rows),
                "mean_accuracy": sum(r["accuracy"] for r in rows) / len(rows),
                "fallback_recall": min(fallback) if fallback else None,
                "false_fallback_rate": max(r["false_fallback_rate"] or 0.0 for r in rows),
            }
        )
    return worst


def all_sets(encoder: Encoder, out: Path) -> dict[str, Any]:
    sets = {found.name: _set_rows(encoder, found, out) for found in route_sets()}
    return {"sets": sets, "worst": _worst(sets), "held_out_set": HELD_OUT}


ROUTE_COUNTS = {"clinc": (10, 50, 150), "banking77": (10, 50, 77)}
QUERY = "What is 17 times 23?"


def _fit(router: Router) -> tuple[float, int]:
    start = time.perf_counter()
    index = router.refresh()
    return time.perf_counter() - start, getattr(index.scorer, "iterations", 0)


def many_routes(encoder: Encoder, out: Path) -> dict[str, Any]:
    """Intents as routes: accuracy, decision time and fit costs as their number grows."""
    general = [(r["text"], BASE_ROUTE) for r in extract("demo_test.jsonl") if r["source"] == "bbh"]
    results = []
    for name, counts in ROUTE_COUNTS.items():
        for count in counts:
            found = intent_routes(name, count)
            routes, _ = found.write(out / "routes" / found.name)
            router = Router(FileRoutes(routes), encoder)
            router.cache.vectors([r["text"] for r in found.routes_rows()])  # not the fit
            fit_s, iterations = _fit(router)
            domain = evaluate(router, found.test)
            fallback = evaluate(router, general)
            router.decide(QUERY)
            p50, _ = _timings(lambda r=router: r.decide(QUERY), 50)
            # One more route: the live router refits from its last fit.
            grown = intent_routes(name, min(count + 1, len(_intents(name))))
            router.source = FileRoutes(grown.write(out / "routes" / f"{found.name}+1")[0])
            add_s, add_iterations = _fit(router)
            results.append(
                {
                    "source": name,
                    "routes": count,
                    "accuracy": domain.accuracy,
                    "false_fallback_rate": domain.false_fallback_rate,
                    "general_fallback_recall": fallback.fallback_recall,
                    "decision_p50_ms": p50,
                    "fit_s": fit_s,
                    "fit_iterations": iterations,
                    "add_one_s": add_s,
                    "add_one_iterations": add_iterations,
                }
            )
    return {"per_route": 10, "results": results}


def _intents(name: str) -> set[str]:
    return {r["intent"] for r in extract(f"{name}.jsonl")}


class _LabelledRoutes:
    """A set's routes plus the labels given so far (a route source whose state moves with
    them): a label to a route is its example, a label `base` a negative, as the review loop's
    labels are in a registry."""

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
        routes = [
            Route(r.name, r.target, (), (*r.extra_examples, *extra.pop(r.name, ())))
            for r in self.file.load(scores_key)
        ]
        if BASE_ROUTE in extra:  # the first `base` labels of a set that had none
            routes.append(Route(BASE_ROUTE, RouteTarget(None), (), tuple(extra[BASE_ROUTE])))
        return routes


def review_loop(encoder: Encoder, out: Path, rounds: int = 4, per_route: int = 5) -> dict[str, Any]:
    """Each round routes a set's whole test stream, then labels the `per_route` most uncertain
    unlabelled requests per route they went to (with their true route, as an operator would);
    they become examples (`base` ones negatives), refitting the scorer and the gate."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for found in route_sets():
        routes, _ = found.write(out / "loop" / found.name)
        source = _LabelledRoutes(routes)
        router = Router(source, encoder)
        labelled: set[int] = set()
        curve = []
        for round_ in range(rounds + 1):
            decisions = router.decide_texts([t for t, _ in found.test])
            report = evaluate(router, found.test)
            rest = [
                d.route == expected
                for i, (d, (_, expected)) in enumerate(zip(decisions, found.test, strict=True))
                if i not in labelled
            ]
            curve.append(
                {
                    "round": round_,
                    "labels": len(labelled),
                    "labels_per_route": len(labelled) / max(len(found.routes), 1),
                    "accuracy": report.accuracy,
                    "fallback_recall": report.fallback_recall,
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
                    source.labels.append(found.test[i])
        curves[found.name] = curve
    plot = out / "review-loop.png"
    _plot_loop(curves, plot)
    return {"rounds": rounds, "per_route": per_route, "curves": curves, "plot": str(plot)}


def _plot_loop(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


ENCODERS = (DEFAULT_ENCODER, "all-mpnet-base-v2")  # the default, and what a pull adds
SHORT_QUERY = "What is 17 times 23?"
LONG_QUERY = " ".join(["Explain, step by step, how the rate of a reaction changes with heat."] * 8)


def compare_encoders(out: Path, home: Path | None, pull: bool) -> dict[str, Any]:
    """Every encoder of `ENCODERS` on every set at the default gate, side by side, with what
    one request's encoding costs. One not pulled yet is pulled only if `pull` (else skipped:
    `--part all` downloads nothing)."""
    from switchboard_lora.router.encoder_cache import EncoderModels

    settings = RegistrySettings() if home is None else RegistrySettings(home=home)
    rows: list[dict[str, Any]] = []
    skipped = []
    for name in ENCODERS:
        if not pull and name not in {
            e.id for e in EncoderModels(settings.home_dir / "encoders").list()
        }:
            skipped.append(name)
            continue
        path = pulled_encoder(name, home)
        memo = MemoEncoder(path)
        per_set = {}
        for found in route_sets():
            routes, _ = found.write(out / "encoders" / name / found.name)
            report = evaluate(Router(FileRoutes(routes), memo), found.test)
            per_set[found.name] = _row("linear", "default", report)
        timed = Encoder(path)  # timed: no memo
        timed.encode([SHORT_QUERY])
        short50, _ = _timings(lambda e=timed: e.encode([SHORT_QUERY]), 100)
        long50, _ = _timings(lambda e=timed: e.encode([LONG_QUERY]), 30)
        worst = _worst({n: [r] for n, r in per_set.items()})[0]
        rows.append(
            {
                "encoder": name,
                "dim": memo.dim,
                "per_set": {n: r["accuracy"] for n, r in per_set.items()},
                "worst_accuracy": worst["accuracy"],
                "mean_accuracy": worst["mean_accuracy"],
                "worst_fallback_recall": worst["fallback_recall"],
                "worst_false_fallback": worst["false_fallback_rate"],
                "encode_short_p50_ms": short50,
                "encode_long_p50_ms": long50,
            }
        )
    return {"encoders": list(ENCODERS), "rows": rows, "not_pulled": skipped}


def _timings(fn: Any, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)) * 1e3, float(np.percentile(samples, 99)) * 1e3


def latency(encoder: Encoder, out: Path) -> dict[str, Any]:
    routes, _ = next(route_sets()).write(out / "latency")
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
    }


def _figure(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.3f}"


def _print(results: dict[str, Any]) -> None:
    if "sets" in results:
        header = f"{'method':9} {'gate':22} {'acc':>6} {'in-dom':>6} {'fb rec':>6} {'false fb':>8}"
        for name, rows in results["sets"]["sets"].items():
            held = " (held out: not used to choose)" if name == HELD_OUT else ""
            print(f"\nset {name!r}{held} (targets: {TARGETS})")
            print(header)
            for r in rows:
                print(
                    f"{r['method']:9} {r['gate']:22} {_figure(r['accuracy'])} "
                    f"{_figure(r['in_domain_accuracy'])} {_figure(r['fallback_recall'])} "
                    f"{_figure(r['false_fallback_rate']):>8}"
                )
        print(f"\nworst over the sets but {HELD_OUT!r} (what a default is chosen by)")
        print(f"{'method':9} {'gate':22} {'acc':>6} {'mean':>6} {'fb rec':>6} {'false fb':>8}")
        for r in results["sets"]["worst"]:
            print(
                f"{r['method']:9} {r['gate']:22} {_figure(r['accuracy'])} "
                f"{_figure(r['mean_accuracy'])} {_figure(r['fallback_recall'])} "
                f"{_figure(r['false_fallback_rate']):>8}"
            )
    if "routes" in results:
        print("\nmany routes: intents as routes, 10 examples each")
        for r in results["routes"]["results"]:
            print(
                f"  {r['source']:9} {r['routes']:>4} routes: accuracy {r['accuracy']:.3f} "
                f"(to base {r['false_fallback_rate']:.3f}), general to base "
                f"{r['general_fallback_recall']:.3f}, decision p50 {r['decision_p50_ms']:.1f} ms, "
                f"fit {r['fit_s']:.2f} s ({r['fit_iterations']} it.), one route added "
                f"{r['add_one_s']:.2f} s ({r['add_one_iterations']} it.)"
            )
    if "loop" in results:
        loop = results["loop"]
        print(
            f"\nreview loop: per round, the {loop['per_route']} most uncertain requests per "
            f"route labelled (target: >= 0.97 with <= 20 per route); plot {loop['plot']}"
        )
        for name, curve in loop["curves"].items():
            points = " ".join(
                f"{c['accuracy']:.3f}/{_figure(c['fallback_recall']).strip()} "
                f"({c['labels_per_route']:4.1f})"
                for c in curve
            )
            print(f"  {name:16} {points}")
        print("(accuracy/fallback recall on the whole stream; in brackets, labels per route)")
    if "volume" in results:
        print_volume(results["volume"])
    if "regret" in results:
        found = results["regret"]
        print(
            "\nrouting judged by its answers: loss per answer token of the reference (lower is "
            f"better), {found['per_source']} requests per source; adapters {found['adapters']}"
        )
        for setup, r in found["setups"].items():
            print(
                f"  {setup:20} n {r['n']}: routed {r['routed']:.3f}, oracle {r['oracle']:.3f}, "
                f"base {r['base']:.3f}, top-2 mix {r['top2_mix']:.3f}, by label "
                f"{r['by_label']:.3f}; regret {r['regret']:.3f} (by label "
                f"{r['regret_by_label']:.3f}), harm {r['harm']:+.3f} on the "
                f"{r['oracle_is_base']} the base answers best; {r['to_base']} routed to base"
            )
    if "encoders" in results:
        print(
            "\nencoders side by side, default gate: accuracy per set; worst over the sets that "
            "choose; encoding one request, p50 ms (short / ~130 tokens)"
        )
        for r in results["encoders"]["rows"]:
            sets = " ".join(f"{n} {a:.3f}" for n, a in r["per_set"].items())
            print(
                f"  {r['encoder']:18} {sets}  worst {r['worst_accuracy']:.3f} mean "
                f"{r['mean_accuracy']:.3f} fb {_figure(r['worst_fallback_recall']).strip()} "
                f"false fb {r['worst_false_fallback']:.3f}  "
                f"{r['encode_short_p50_ms']:.1f} / {r['encode_long_p50_ms']:.1f} ms"
            )
        for name in results["encoders"]["not_pulled"]:
            print(f"  {name:18} not pulled: `--part encoders` pulls it")
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


PARTS = ("all", "sets", "routes", "loop", "regret", "encoders", "latency", "volume")


def main(
    part: Annotated[str, typer.Option(help=", ".join(PARTS))] = "all",
    out: Annotated[Path, typer.Option(help="Where the sets' files go.")] = Path(
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
        int, typer.Option(help="Route examples added at once in the volume part.")
    ] = 100_000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    if part not in PARTS:
        raise typer.BadParameter(f"--part is one of {', '.join(PARTS)}")
    path = pulled_encoder(encoder_name, home)
    results: dict[str, Any] = {"encoder": str(path), "encoder_device": encoder_device}
    encoder = MemoEncoder(path, encoder_device)
    if part in ("all", "sets"):
        results["sets"] = all_sets(encoder, out)
    if part in ("all", "routes"):
        results["routes"] = many_routes(Encoder(path, encoder_device), out)  # timed: no memo
    if part in ("all", "loop"):
        results["loop"] = review_loop(encoder, out)
    if part in ("all", "regret"):
        results["regret"] = regret(encoder, home)
    if part in ("all", "encoders"):
        results["encoders"] = compare_encoders(out, home, pull=part == "encoders")
    if part in ("all", "latency"):
        results["latency"] = latency(Encoder(path, encoder_device), out)  # timed: no memo
    if part in ("all", "volume"):
        results["volume"] = volume(Encoder(path, encoder_device), default_base(home), examples)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_benchmark(main)
