"""The routing benchmark's committed extracts and the general requests the router ships:
there, well-formed, labelled as their sources label them, and kept apart from each other.

The rebuild itself needs the sources (`python -m bench.routing_data --sources DIR --check`);
these checks need only the files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.paths import DATA, ROOT

EXTRACTS = ROOT / "bench" / "data" / "routing"
GENERAL = ROOT / "router" / "data" / "general_requests.jsonl"

# What each source's own label means for the demo's routes (docs: SOURCES.md there). Written
# here from the sources' documentation, not imported from the builder: the data must agree.
BBH_GENERAL = {
    "causal_judgement", "date_understanding", "disambiguation_qa", "formal_fallacies",
    "hyperbaton", "logical_deduction_three_objects", "movie_recommendation", "navigate",
    "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names",
    "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_three_objects", "web_of_lies",
}  # fmt: skip
CLINC_DOMAINS = {
    "auto_and_commute", "banking", "credit_cards", "home", "kitchen_and_dining", "meta",
    "small_talk", "travel", "utility", "work",
}  # fmt: skip


def expected_for(label: str) -> str:
    source, _, detail = label.partition(":")
    if source in ("svamp", "gsm8k"):
        return "math"
    if source == "sede":
        return "sql"
    if source == "scibench" and detail in ("atkins", "chemmc", "quan", "matter"):
        return "science"  # chemistry textbooks
    if source in ("mbpp", "humaneval"):
        return "code"
    if source == "clinc" and detail in CLINC_DOMAINS:
        return "dialogue" if detail == "small_talk" else "base"
    if source == "bbh" and detail in BBH_GENERAL:
        return "base"
    raise AssertionError(f"a label no source gives: {label}")


def rows(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, path
    return [json.loads(line) for line in lines]


def test_every_extract_is_well_formed_and_named_in_sources() -> None:
    sources = (EXTRACTS / "SOURCES.md").read_text()
    for name in ("clinc.jsonl", "banking77.jsonl", "demo_test.jsonl", "spanning.jsonl"):
        assert f"`{name}`" in sources, name
        found = rows(EXTRACTS / name)
        for row in found:
            assert isinstance(row["text"], str) and row["text"].strip() == row["text"] != ""
        # Each source names its repository, a commit and a licence in SOURCES.md.
    for repo in (
        "clinc/oos-eval", "PolyAI-LDN/task-specific-datasets", "arkilpatel/SVAMP",
        "openai/grade-school-math", "hirupert/sede", "mandyyyyii/scibench", "microsoft/CodeT",
        "suzgunmirac/BIG-Bench-Hard", "anthropics/hh-rlhf",
    ):  # fmt: skip
        line = next(line for line in sources.splitlines() if repo in line)
        assert re.search(rf"`{re.escape(repo)}` @ `[0-9a-f]{{8}}`", line), line
        assert re.search(r"MIT|CC BY|Apache-2\.0", line), line


def test_intent_sets_keep_their_sources_labels_and_splits() -> None:
    clinc = rows(EXTRACTS / "clinc.jsonl")
    domain_of: dict[str, set[str]] = {}
    for row in clinc:
        domain_of.setdefault(row["intent"], set()).add(row["domain"])
    assert len(domain_of) == 150 and all(len(d) == 1 for d in domain_of.values())
    per_domain = Counter(next(iter(d)) for d in domain_of.values())
    assert set(per_domain) == CLINC_DOMAINS and set(per_domain.values()) == {15}
    assert Counter((r["intent"], r["split"]) for r in clinc) == {
        **{(i, "train"): 20 for i in domain_of},
        **{(i, "test"): 10 for i in domain_of},
    }
    assert not any(r["intent"] == "oos" for r in clinc)  # CLINC's out-of-scope split: never
    banking = rows(EXTRACTS / "banking77.jsonl")
    intents = {r["intent"] for r in banking}
    assert len(intents) == 77
    assert Counter(r["split"] for r in banking) == {"train": 77 * 20, "test": 77 * 10}
    for found in (clinc, banking):  # a test request is never also a route's example
        train = {r["text"].casefold() for r in found if r["split"] == "train"}
        assert not [r for r in found if r["split"] == "test" and r["text"].casefold() in train]


def test_demo_test_rows_carry_their_sources_labels() -> None:
    found = rows(EXTRACTS / "demo_test.jsonl")
    wrong = [
        (r["label"], r["expected"]) for r in found if expected_for(r["label"]) != r["expected"]
    ]
    assert wrong == []
    assert Counter(r["expected"] for r in found) == {
        "math": 120, "sql": 120, "science": 60, "code": 120, "dialogue": 120, "base": 240,
    }  # fmt: skip
    references = [r for r in found if r["source"] != "clinc"]
    assert references and all(r["reference"].strip() for r in references)
    # Nothing of the demo's own data is tested as "another source".
    demo = {
        json.loads(line)["messages"][0]["content"].casefold()
        for path in DATA.glob("*/train.jsonl")
        for line in path.read_text().splitlines()
    }
    assert not [r for r in found if r["text"].casefold() in demo]
    spanning = rows(EXTRACTS / "spanning.jsonl")
    assert {r["label"] for r in spanning} == {"scibench:fund", "scibench:class", "scibench:thermo"}


def test_shipped_general_requests_are_apart_from_every_test_set() -> None:
    """The router's general requests are what it weighs requests against: a test request
    among them would make the benchmark measure its own negatives."""
    general = rows(GENERAL)
    texts = [r["text"] for r in general]
    assert 2000 <= len(texts) == len({t.casefold() for t in texts})
    assert all(
        12 <= len(t) <= 400 and r["source"] == "hh-rlhf"
        for t, r in zip(texts, general, strict=True)
    )
    shipped = {t.casefold() for t in texts}
    tested = [
        r["text"]
        for name in ("clinc.jsonl", "banking77.jsonl", "demo_test.jsonl", "spanning.jsonl")
        for r in rows(EXTRACTS / name)
    ]
    assert not [t for t in tested if t.casefold() in shipped]


@pytest.mark.parametrize("name", ["general_requests.jsonl"])
def test_the_package_carries_the_general_requests(name: str) -> None:
    from importlib.resources import files

    packaged = files("switchboard_lora.router") / "data" / name
    assert packaged.read_bytes() == GENERAL.read_bytes()
