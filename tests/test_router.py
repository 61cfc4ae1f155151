"""The router on the real encoder (all-MiniLM-L6-v2) and real requests from the demo data.

Routes are real registry versions (tiny-base LoRA and prefix adapters) whose manifests carry
routing examples sampled from the demo domains' training files; queries are the held-out
requests of the same domains. The registry is SQLite or PostgreSQL, as everywhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import pytest

from support.paths import DATA, ROOT
from switchboard_lora.registry import BaseModelInfo, ManifestDraft, Registry, SwitchboardError
from switchboard_lora.registry.errors import ErrorCode
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.router.decision import Policy, RouteTarget
from switchboard_lora.router.encoder import Encoder
from switchboard_lora.router.evaluate import calibrate, evaluate
from switchboard_lora.router.router import FileRoutes, RegistryRoutes, Route, Router
from switchboard_lora.router.scorers import LinearScorer
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.loop import routing_sample

EXTRACTS = ROOT / "bench" / "data" / "routing"
GENERAL_REQUESTS = [  # requests that belong to no demo domain: the `base` route's examples
    "What's the weather going to be like in Lisbon this weekend?",
    "Can you recommend a good novel to read on holiday?",
    "Who won the football world cup in 1998?",
    "Translate 'good morning' into French.",
    "Write a short poem about autumn leaves.",
    "What is the capital city of Australia?",
    "Give me tips for a job interview tomorrow.",
    "How do I get red wine out of a carpet?",
    "Summarise the plot of Romeo and Juliet.",
    "Which films did Alfred Hitchcock direct?",
]


def requests(domain: str, split: str, count: int) -> list[str]:
    examples = load_jsonl(DATA / domain / f"{split}.jsonl").examples
    return routing_sample(examples, count, seed=0)


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder()


def publish(
    registry: Registry, source: Path, name: str, base: BaseModelInfo, examples: list[str]
) -> VersionInfo:
    manifest = registry.publish(source, name, base, draft=ManifestDraft(routing_examples=examples))
    return registry.resolve(manifest.ref)


@pytest.fixture
def two_routes(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> Registry:
    publish(registry, lora_dir, "math", tiny_base, requests("math", "train", 30))
    publish(registry, lora_dir_2, "sql", tiny_base, requests("sql", "train", 30))
    registry.routes.add_examples("base", GENERAL_REQUESTS, "tests")
    return registry


def test_held_out_requests_reach_their_adapter(
    two_routes: Registry, encoder: Encoder, home: Path
) -> None:
    router = Router(RegistryRoutes(two_routes), encoder, cache_dir=home / "embeddings")
    for domain in ("math", "sql"):
        decisions = router.decide_texts(requests(domain, "eval", 20))
        refs = [d.choices[0].ref if d.choices else "base" for d in decisions]
        assert refs.count(f"{domain}:1") >= 18, refs
    general = router.decide("Which actor played the lead in the film Casablanca?")
    assert general.kind == "base" and general.scores["base"] > general.scores["math"]
    chat = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": requests("sql", "eval", 1)[0]},
    ]
    decision = router.decide(chat)
    assert decision.kind == "adapter" and decision.choices[0].ref == "sql:1"
    assert decision.choices[0].version is not None
    assert (
        decision.to_json()["adapters"][0]["served_name"] == decision.choices[0].version.served_name
    )


def test_router_follows_the_registry_live_without_re_embedding(
    two_routes: Registry,
    encoder: Encoder,
    home: Path,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    prefix_dir: Path,
) -> None:
    router = Router(RegistryRoutes(two_routes), encoder, cache_dir=home / "embeddings")
    query = requests("math", "eval", 1)[0]
    assert router.decide(query).choices[0].ref == "math:1"
    built = encoder.encoded

    # A new version with the same examples: served at once, nothing re-embedded but the query.
    publish(two_routes, lora_dir, "math", tiny_base, requests("math", "train", 30))
    assert router.decide(query).choices[0].ref == "math:2"
    assert encoder.encoded == built + 1

    # Moving the prod alias back takes effect on the next request.
    two_routes.set_alias("math", "prod", 1)
    assert router.decide(query).choices[0].ref == "math:1"
    assert encoder.encoded == built + 2

    # A new route: only its own examples are embedded.
    science = requests("science", "train", 25)
    publish(two_routes, prefix_dir, "science", tiny_base, science)
    decision = router.decide(requests("science", "eval", 1)[0])
    assert decision.choices[0].ref == "science:1"
    assert encoder.encoded == built + 3 + len(science)

    # No change: no rebuild, one encoding per request.
    rebuilds = router.rebuilds
    router.decide(query)
    assert router.rebuilds == rebuilds


def test_negative_examples_send_requests_to_the_base(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path, encoder: Encoder
) -> None:
    publish(registry, lora_dir, "math", tiny_base, requests("math", "train", 30))
    publish(registry, lora_dir_2, "sql", tiny_base, requests("sql", "train", 30))
    router = Router(RegistryRoutes(registry), encoder)
    weather = "Will it rain in Oslo tomorrow afternoon?"
    # No `base` examples of the operator's: the general requests shipped with the router
    # speak for the base. Without them nothing did, and every request got an adapter.
    assert router.decide(weather).kind == "base"
    assert (
        Router(RegistryRoutes(registry), encoder, general=False).decide(weather).kind == "adapter"
    )
    calories = "How many calories are in two bananas?"  # numbers: near enough to math
    assert router.decide(calories).kind == "adapter"
    added = registry.routes.add_examples(
        "base",
        ["How many calories are in an apple?", "How much protein is in an egg?", *GENERAL_REQUESTS],
        "operator",
    )
    assert added == len(GENERAL_REQUESTS) + 2
    decision = router.decide(calories)  # what the operator said goes
    assert decision.kind == "base" and decision.in_domain is not None
    assert f"in-domain {decision.in_domain:.3f} < threshold 0.900" in decision.reason
    # Bad additions and removals are refused whole: nothing changes.
    for texts in (["fine", "   "], ["x" * 20_001]):
        with pytest.raises(SwitchboardError) as bad:
            registry.routes.add_examples("base", texts, "operator")
        assert bad.value.code == ErrorCode.INVALID_INPUT
    with pytest.raises(SwitchboardError) as unknown:
        registry.routes.remove_examples("base", [10**9])
    assert unknown.value.code == ErrorCode.NOT_FOUND
    assert len(registry.routes.examples("base")) == added
    # Removing them again restores the old behaviour: the change is live both ways.
    registry.routes.remove_examples("base")
    assert router.decide(calories).kind == "adapter"


def test_explicit_refs_bypass_routing(two_routes: Registry, encoder: Encoder) -> None:
    router = Router(RegistryRoutes(two_routes), encoder)
    router.index()
    before = encoder.encoded
    math_request = requests("math", "eval", 1)[0]
    decision = router.decide(math_request, model="sql:1")
    assert decision.kind == "adapter" and decision.choices[0].ref == "sql:1"
    assert decision.reason == "explicit ref" and not decision.scores
    assert router.decide(math_request, model="base").kind == "base"
    assert encoder.encoded == before  # nothing was embedded
    with pytest.raises(SwitchboardError) as missing:
        router.decide(math_request, model="legal")
    assert missing.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(SwitchboardError) as bad:
        router.decide(math_request, model="Math!")
    assert bad.value.code == ErrorCode.INVALID_NAME


def _version(name: str, method: str = "lora", base: str = "b1") -> VersionInfo:
    from datetime import UTC, datetime

    return VersionInfo(name, 1, method, 4, base, f"{name}-v1-x", "0" * 64, datetime.now(UTC), None)


def test_mixing_policy_weights_and_guards() -> None:
    classes = ["base", "code", "math", "sql", "chat"]
    scores = np.array([0.05, 0.10, 0.45, 0.30, 0.10])
    in_domain = np.array([0.0, 0.97, 0.99, 0.97, 0.97])
    targets = {
        "code": RouteTarget(_version("code", base="b2")),  # another base: never mixed in
        "math": RouteTarget(_version("math")),
        "sql": RouteTarget(_version("sql")),
        "chat": RouteTarget(_version("chat", method="prefix")),
    }
    mixing = Policy(top_k=3)
    kind, choices, _ = mixing.decide(classes, scores, in_domain, targets)
    assert kind == "mix" and [c.route for c in choices] == ["math", "sql"]
    weights = [c.weight for c in choices]
    assert sum(weights) == pytest.approx(1.0) and weights == pytest.approx([0.6, 0.4])
    _, hot, _ = Policy(top_k=3, temperature=0.5).decide(classes, scores, in_domain, targets)
    _, flat, _ = Policy(top_k=3, temperature=4.0).decide(classes, scores, in_domain, targets)
    assert hot[0].weight > choices[0].weight > flat[0].weight > 0.5
    # A prefix adapter on top is served alone: a mix is one LoRA.
    prefix_top = np.array([0.05, 0.10, 0.30, 0.10, 0.45])
    kind, choices, _ = mixing.decide(classes, prefix_top, in_domain, targets)
    assert kind == "adapter" and choices[0].route == "chat"
    # A calibrated threshold keeps a second route that is less surely in its domain out.
    targets["sql"] = RouteTarget(_version("sql"), threshold=0.98)
    kind, choices, _ = mixing.decide(classes, scores, in_domain, targets)
    assert kind == "adapter" and choices[0].route == "math"
    # Below its threshold the top route gives way to the base, however well it scores.
    kind, _, reason = Policy(threshold=0.995).decide(classes, scores, in_domain, targets)
    assert kind == "base" and "in-domain 0.990 < threshold 0.995" in reason


def test_bad_input_is_refused_clearly(two_routes: Registry, encoder: Encoder) -> None:
    router = Router(RegistryRoutes(two_routes), encoder)
    for text in ("", "   \n\t "):
        with pytest.raises(SwitchboardError) as empty:
            router.decide(text)
        assert empty.value.code == ErrorCode.INVALID_INPUT
    with pytest.raises(SwitchboardError, match="no user message"):
        router.decide([{"role": "system", "content": "be brief"}])
    long = router.decide(requests("math", "eval", 1)[0] + " and then" * 2000)
    assert long.truncated and long.tokens == encoder.max_tokens
    assert long.choices[0].ref == "math:1"  # decided on what fits the window
    assert not router.decide(requests("math", "eval", 1)[0]).truncated


def test_bad_route_files_are_refused_whole(tmp_path: Path, encoder: Encoder) -> None:
    routes = tmp_path / "routes.jsonl"
    routes.write_text(
        json.dumps({"name": "math", "text": "what is 2 + 2?"})
        + "\n{not json\n"
        + json.dumps({"name": "sql", "text": "  "})
        + "\n"
        + json.dumps({"name": "Bad Name", "text": "x"})
        + "\n"
    )
    with pytest.raises(SwitchboardError) as bad:
        FileRoutes(routes)
    message = bad.value.message
    assert bad.value.code == ErrorCode.INVALID_INPUT
    assert "3 bad line(s)" in message and "line 2: not JSON" in message
    assert (
        "line 3: missing or empty 'text'" in message and "line 4: invalid adapter name" in message
    )

    only_base = tmp_path / "base.jsonl"
    only_base.write_text(json.dumps({"name": "base", "text": "hello"}) + "\n")
    with pytest.raises(SwitchboardError, match="no route other than base"):
        FileRoutes(only_base)

    routes.write_text(
        "\n".join(
            json.dumps({"name": n, "text": t})
            for n in ("math", "sql")
            for t in requests(n, "train", 5)
        )
    )
    router = Router(FileRoutes(routes), encoder)
    with pytest.raises(SwitchboardError, match=r"route\(s\) science, which have no examples"):
        evaluate(router, [("a question about plants", "science")])


def test_evaluation_and_calibration_on_real_requests(
    two_routes: Registry, encoder: Encoder
) -> None:
    router = Router(RegistryRoutes(two_routes), encoder)
    held_out = [(t, "math") for t in requests("math", "eval", 15)]
    held_out += [(t, "sql") for t in requests("sql", "eval", 15)]
    held_out += [
        (t, "base")
        for t in (
            "Who painted the Mona Lisa?",
            "Suggest a name for my new puppy.",
            "What time zone is Tokyo in?",
            "How long should I boil an egg?",
        )
    ]
    report = evaluate(router, held_out)
    assert report.n == len(held_out)
    right = sum(row.get(expected, 0) for expected, row in report.confusion.items())
    assert report.accuracy == pytest.approx(right / report.n, abs=1e-4)
    assert report.in_domain_accuracy is not None and report.in_domain_accuracy >= 0.9

    thresholds = calibrate(router, held_out)
    assert set(thresholds) <= {"math", "sql"} and thresholds
    for threshold, rows in thresholds.values():
        assert 0.0 <= threshold <= 1.0 and rows > 0
    # Thresholds fitted on other scores (another method's, an older scoring's) do not apply.
    two_routes.routes.set_thresholds(encoder.identity, {r: (0.99, 1) for r in thresholds})
    assert all(router.routes[r].target.threshold is None for r in thresholds)
    two_routes.routes.set_thresholds(router.scores_key, thresholds)
    for route, (threshold, _) in thresholds.items():  # non-empty (asserted above)
        assert router.routes[route].target.threshold == threshold
    for route in {"math", "sql"} - set(thresholds):  # not calibrated: the policy's default
        assert router.routes[route].target.threshold is None
    # Calibration maximises held-out accuracy: never worse than before on the same rows.
    assert evaluate(router, held_out).accuracy >= report.accuracy


def test_embedding_cache_is_per_encoder_and_survives_restarts(
    two_routes: Registry, encoder: Encoder, home: Path, tmp_path: Path
) -> None:
    cache = home / "embeddings"
    Router(RegistryRoutes(two_routes), encoder, cache_dir=cache).index()
    files = sorted(p.name for p in (cache / encoder.identity[:32]).iterdir())
    # One per version (the general requests' vectors for this encoder ship in the package).
    assert len(files) == 2 and all(f.endswith(".npz") for f in files)

    restarted = Router(RegistryRoutes(two_routes), encoder, cache_dir=cache)
    restarted.cache._vectors.clear()  # a new process: nothing in memory
    before = encoder.encoded
    restarted.index()
    # Manifest examples come from disk; only the operator's base examples are re-embedded.
    assert encoder.encoded - before == len(GENERAL_REQUESTS)

    # The same model with one file changed is another encoder: other vectors, other folder.
    import shutil

    copy = tmp_path / "encoder"
    shutil.copytree(encoder.path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert Encoder(copy).identity != encoder.identity


def test_linear_scoring_picks_planted_routes_among_ten_thousand() -> None:
    """Correctness at 10,000 routes; its speed is measured in `bench/router.py`."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((10_000, 384)).astype(np.float32)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    scorer = LinearScorer.from_weights(
        [f"r{i}" for i in range(10_000)], weights * 20, np.zeros(10_000)
    )
    planted = [17, 4_242, 9_999]
    scores = scorer.scores(weights[planted])
    assert scores.shape == (3, 10_000)
    assert list(scores.argmax(axis=1)) == planted
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-4)


# General requests of kinds the `base` examples do not show, for the gate tests.
UNSEEN_GENERAL = [
    "Who wrote the novel Pride and Prejudice?",
    "What should I pack for a week of hiking in Scotland?",
    "How many players are on a rugby union team?",
    "Can you suggest a birthday present for my grandmother?",
    "What is the tallest mountain in Africa?",
    "Recommend a board game for four players.",
    "How do I care for a basil plant on a windowsill?",
    "What are some good stretches after running?",
    "Which countries border Switzerland?",
    "Give me a recipe for a simple tomato soup.",
]


def _module_routes(count: int) -> dict[str, list[str]]:
    """`count` routes of code requests, one per stdlib module: many routes much alike."""
    from switchboard_lora.demo_data import stdlib_functions

    by_module: dict[str, list[str]] = {}
    for row in stdlib_functions():
        request = row["messages"][0]["content"]
        module = request.split("(as in `")[1].split("`")[0]
        by_module.setdefault(module, []).append(request)
    roomy = sorted(m for m, texts in by_module.items() if len(texts) >= 4)
    return {
        "py-" + m.lower().replace(".", "-").replace("_", "-")[:40]: by_module[m][:4]
        for m in roomy[:count]
    }


def _routes_file(path: Path, routes: dict[str, list[str]]) -> Path:
    path.write_text(
        "".join(json.dumps({"name": n, "text": t}) + "\n" for n, ts in routes.items() for t in ts)
    )
    return path


def test_one_gate_threshold_holds_from_two_routes_to_fifty(
    tmp_path: Path, encoder: Encoder
) -> None:
    """The default threshold means the same as routes are added (here 2, 5, then 5 + 40 code
    routes much alike): domain requests keep passing the gate, general ones keep failing it."""
    from switchboard_lora.demo_data import DOMAINS

    domains = {d: requests(d, "train", 30) for d in DOMAINS}
    fillers = _module_routes(40)
    assert len(fillers) == 40
    held = [(t, d) for d in ("math", "sql") for t in requests(d, "eval", 20)]
    for routes in (
        {d: domains[d] for d in ("math", "sql")},
        domains,
        {**domains, **fillers},
    ):
        path = _routes_file(tmp_path / "routes.jsonl", {**routes, "base": GENERAL_REQUESTS})
        router = Router(FileRoutes(path), encoder)
        report = evaluate(router, held + [(t, "base") for t in UNSEEN_GENERAL])
        assert report.in_domain_accuracy is not None and report.in_domain_accuracy >= 0.95, (
            len(routes),
            report.confusion,
        )
        assert report.fallback_recall is not None and report.fallback_recall >= 0.7, (
            len(routes),
            report.confusion,
        )


def test_a_change_refits_from_the_last_fit_to_the_same_decisions(
    tmp_path: Path, encoder: Encoder
) -> None:
    """Adding or removing a route refits the linear scorer starting from its last fit: far
    fewer solver iterations than a fit from nothing, and the same scores (the objective is
    convex, so both reach one optimum)."""
    modules = _module_routes(51)
    names = list(modules)
    first = {**{n: modules[n] for n in names[:50]}, "base": GENERAL_REQUESTS}
    texts = [t for ts in modules.values() for t in ts] + UNSEEN_GENERAL
    router = Router(FileRoutes(_routes_file(tmp_path / "first.jsonl", first)), encoder)
    router.cache.vectors(texts)
    assert router.index().scorer is not None
    for change, routes in (
        ("added", {**first, names[50]: modules[names[50]]}),
        ("removed", {n: t for n, t in first.items() if n != names[0]}),
    ):
        path = _routes_file(tmp_path / f"{change}.jsonl", routes)
        router.source = FileRoutes(path)
        warm = router.refresh().scorer  # the refit itself, however long it takes
        fresh = Router(FileRoutes(path), encoder)
        fresh.cache = router.cache
        cold = fresh.index().scorer
        assert isinstance(warm, LinearScorer) and isinstance(cold, LinearScorer)
        assert warm.classes == cold.classes == sorted(routes)
        assert warm.iterations * 2 <= cold.iterations, (change, warm.iterations, cold.iterations)
        vectors = encoder.encode(texts)
        np.testing.assert_allclose(warm.scores(vectors), cold.scores(vectors), atol=0.01)


def test_routes_without_base_examples_still_send_general_requests_to_base(
    tmp_path: Path, encoder: Encoder
) -> None:
    """No `base` examples and 5 examples per route: the gate weighs requests against the
    general requests shipped with the router, so general requests go to the base and the
    routes' own requests (phrased as their examples are) mostly pass."""
    from switchboard_lora.demo_data import DOMAINS

    path = _routes_file(tmp_path / "routes.jsonl", {d: requests(d, "train", 5) for d in DOMAINS})
    held = [(t, d) for d in DOMAINS for t in requests(d, "eval", 20)]
    general = [(t, "base") for t in UNSEEN_GENERAL]
    report = evaluate(Router(FileRoutes(path), encoder), held + general)
    assert report.fallback_recall is not None and report.fallback_recall >= 0.7, report.confusion
    assert report.false_fallback_rate is not None and report.false_fallback_rate <= 0.15
    alone = evaluate(Router(FileRoutes(path), encoder, general=False), held + general)
    assert alone.fallback_recall == 0.0  # nothing spoke for the base
    centroid = Router(FileRoutes(path), encoder, method="centroid")
    assert report.in_domain_accuracy is not None
    assert report.in_domain_accuracy >= (evaluate(centroid, held).in_domain_accuracy or 0.0)


def test_a_route_set_without_base_examples_on_other_sources(
    encoder: Encoder, tmp_path: Path
) -> None:
    """The demo's domains routed on their adapters' 50 examples each, no `base` examples,
    tested on requests from other sources and general requests (the committed benchmark
    extract): general requests go to the base, where before nothing could send them there."""
    rows = [json.loads(line) for line in (EXTRACTS / "demo_test.jsonl").read_text().splitlines()]
    test = [(r["text"], r["expected"]) for r in rows[::3]]
    from switchboard_lora.demo_data import DOMAINS

    path = _routes_file(tmp_path / "routes.jsonl", {d: requests(d, "train", 50) for d in DOMAINS})
    report = evaluate(Router(FileRoutes(path), encoder), test)
    alone = evaluate(Router(FileRoutes(path), encoder, general=False), test)
    assert alone.fallback_recall == 0.0
    assert report.fallback_recall is not None and report.fallback_recall >= 0.5, report.confusion
    assert report.accuracy >= alone.accuracy + 0.05, (report.accuracy, alone.accuracy)


def test_a_description_is_evidence_beside_few_examples(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path, encoder: Encoder
) -> None:
    """A route's description, from its manifest or set (live) by an operator, which overrides
    it, counts beside its examples: with two examples, the right description routes more of
    its domain there than a wrong one."""
    for name, source in (("math", lora_dir), ("sql", lora_dir_2)):
        publish(registry, source, name, tiny_base, requests(name, "train", 30))
    registry.routes.add_examples("base", GENERAL_REQUESTS, "tests")
    science = "Science questions about physics, chemistry, biology and the natural world."
    registry.publish(lora_dir, "science", tiny_base, draft=ManifestDraft(description=science))
    router = Router(RegistryRoutes(registry), encoder)
    assert router.routes["science"].description == science  # no examples: still a route
    assert router.routes["science"].size == 0

    registry.routes.add_examples("science", requests("science", "train", 2), "tests")
    held = [(t, "science") for t in requests("science", "eval", 30)]
    held += [(t, d) for d in ("math", "sql") for t in requests(d, "eval", 10)]
    described = evaluate(router, held)
    registry.routes.describe("science", "Recipes for cakes and biscuits.")  # overrides it
    assert router.routes["science"].description == "Recipes for cakes and biscuits."
    misled = evaluate(router, held)
    right, wrong = (r.confusion["science"].get("science", 0) for r in (described, misled))
    assert right > wrong, (described.confusion, misled.confusion)
    registry.routes.describe("science", None)  # back to the manifest's
    assert router.routes["science"].description == science

    for bad, message in (("base", "not a description"), ("Bad Name", "invalid adapter name")):
        with pytest.raises(SwitchboardError, match=message):
            registry.routes.describe(bad, "anything")
    with pytest.raises(SwitchboardError, match="empty"):
        registry.routes.describe("science", "   ")
    with pytest.raises(SwitchboardError, match="limit is 1000"):
        registry.routes.describe("science", "x" * 1001)
    assert router.routes["science"].description == science


class _SlowRoutes:
    """Routes from files, switched by `use`, whose loads wait for `loads` (a refit that takes
    as long as the test says) or fail when told: the other side of the router's source seam."""

    def __init__(self, path: Path) -> None:
        self.current = FileRoutes(path)
        self.loads = threading.Event()
        self.loads.set()
        self.fail = False

    def use(self, path: Path) -> None:
        self.current = FileRoutes(path)

    def state(self) -> Hashable:
        return self.current.state()

    def resolve(self, ref: str) -> VersionInfo:
        return self.current.resolve(ref)

    def load(self, scores_key: str) -> list[Route]:
        assert self.loads.wait(60)
        if self.fail:
            raise RuntimeError("the route store went away")
        return self.current.load(scores_key)


def test_a_slow_refit_runs_beside_routing(tmp_path: Path, encoder: Encoder) -> None:
    """Issue 34, item 26: 100,000 new examples stalled routed requests for minutes. A refit
    now runs beside serving: requests after a short wait are routed by the previous fit,
    the new one serves once ready, and a failed refit leaves the previous fit serving."""
    math, sql = requests("math", "train", 20), requests("sql", "train", 20)
    source = _SlowRoutes(
        _routes_file(tmp_path / "a.jsonl", {"math": math, "base": GENERAL_REQUESTS})
    )
    router = Router(source, encoder, Policy(threshold=0.0), refit_wait_s=0.3)  # no gate
    query = requests("sql", "eval", 1)[0]
    assert router.decide(query).choices[0].ref == "math"  # the only route there is

    source.loads.clear()  # the next refit takes until the test lets it finish
    source.use(
        _routes_file(tmp_path / "b.jsonl", {"math": math, "sql": sql, "base": GENERAL_REQUESTS})
    )
    started = time.monotonic()
    during = [router.decide(query) for _ in range(3)]
    assert time.monotonic() - started < 5  # waited once, briefly; never for the refit
    assert [d.choices[0].ref for d in during] == ["math"] * 3  # the previous fit serves
    source.loads.set()
    router.refresh()
    assert router.decide(query).choices[0].ref == "sql"

    source.fail = True
    source.use(_routes_file(tmp_path / "c.jsonl", {"sql": sql, "base": GENERAL_REQUESTS}))
    rebuilds = router.rebuilds
    assert router.refresh().classes == ["base", "math", "sql"]  # failed: the last fit serves
    assert router.decide(query).choices[0].ref == "sql" and router.rebuilds == rebuilds
    source.fail = False  # the same state is not retried; the next change is
    source.use(_routes_file(tmp_path / "d.jsonl", {"sql": sql, "base": GENERAL_REQUESTS}))
    assert router.refresh().classes == ["base", "sql"]


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_the_gate_scores_a_request_against_general_requests_per_route() -> None:
    """The in-domain score is made of shares of general requests less near than the request
    (to the route; to their own best route); the operator's `base` examples override it where
    they are nearer; a general request that repeats a route's own example is no evidence."""
    from switchboard_lora.router.gate import OpenSetGate

    rng = np.random.default_rng(7)
    centre = _unit(rng.standard_normal((1, 32)))
    examples = _unit(centre + 0.3 * rng.standard_normal((6, 32)))
    general = _unit(rng.standard_normal((200, 32)))
    gate = OpenSetGate({"r": examples}, general)
    near, far = _unit(centre + 0.1 * rng.standard_normal((1, 32))), general[:1]
    assert gate.in_domain(near, "r")[0] == 1.0  # nearer than every general request
    assert gate.in_domain(far, "r")[0] <= 1.0 - 1 / 200  # a general request is not
    # The scores are percentiles: over the general requests themselves, about uniform.
    own = gate.in_domain(general, "r")
    assert abs(float(np.mean(own)) - 0.5) < 0.05 and own.min() >= 0.0
    # Negatives nearer than the route send a request to 0, wherever it stands otherwise.
    negatives = _unit(near + 0.01 * rng.standard_normal((3, 32)))
    assert OpenSetGate({"r": examples}, general, negatives).in_domain(near, "r")[0] == 0.0
    # A general request that repeats a route example is left out of that route's percentile.
    echoed = OpenSetGate({"r": examples}, np.concatenate([general, examples]))
    # (the same shares, but for a tie moved by float rounding: at most one request in 200)
    np.testing.assert_allclose(echoed.in_domain(general, "r"), own, atol=1 / 200 + 1e-6)
    # No general requests and no negatives: nothing speaks for the base.
    assert OpenSetGate({"r": examples}, general[:0]).in_domain(far, "r")[0] == 1.0
    # Laid out per class, for each request's best routes only.
    classes = ["base", "r"]
    scores = OpenSetGate({"r": examples}, general).scores(near, classes, np.array([[0.1, 0.9]]))
    assert scores.shape == (1, 2) and scores[0, 0] == 0.0 and scores[0, 1] == 1.0


def test_the_general_requests_vectors_shipped_are_the_default_encoders(encoder: Encoder) -> None:
    """The package ships the general requests' vectors under the default encoder, so a
    first start does not embed them: they must be what that encoder gives (float16)."""
    from switchboard_lora.router.general import general_requests, shipped_vectors

    texts, _ = general_requests()
    shipped = shipped_vectors(encoder.identity)
    assert shipped is not None and shipped.shape == (len(texts), encoder.dim)
    sample = list(range(0, len(texts), 97))
    fresh = encoder.encode([texts[i] for i in sample])
    np.testing.assert_allclose(shipped[sample], fresh, atol=2e-3)
    assert shipped_vectors("0" * 64) is None  # another encoder embeds them itself
