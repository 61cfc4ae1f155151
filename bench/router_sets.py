"""The router benchmark's cross-source sets, built from public BIG-bench tasks.

Each set is three files: `routes.jsonl` (the routes' examples, as an operator would give
them, with 50 general requests as `base` examples), `calibration.jsonl` (held-out requests
from the same sources) and `test.jsonl` (requests for the same routes from *other* sources,
phrased and formatted differently, plus general requests that belong to no route).

- `demo`: the demo domains; routes from the project's own demo data.
- `paired`: nothing from the demo data; one BIG-bench task per route, another for its test
  (chess, units, physics, dates, movies); questions.
- `styles`: commands, pasted code, puzzles and claims (code, editing, puzzles, factcheck).
- `chat` (held out: not used to choose anything, reported apart): chat turns, how-tos and
  stories; its general requests are multi-turn chit-chat's last turns.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.paths import DATA
from switchboard_lora.demo_data import DOMAINS, general_request
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.loop import routing_sample

TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
HELD_OUT = "chat"

# The demo set's test sources per domain: (task, how many). Chosen for label validity: every
# request plainly belongs to its domain (e.g. numeric physics problems are left out of
# `science`: they are math word problems as much).
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


@dataclass(frozen=True, slots=True)
class TaskSet:
    """Routes whose examples come from some tasks and whose test requests from others."""

    seed: int
    routes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # route -> (examples', test's)
    general: tuple[tuple[str, int], ...]  # general test requests: (task, how many)
    descriptions: dict[str, str]  # route -> what an operator would say it is for


# Route descriptions as an operator would write them from the route's purpose (written before
# any test set was scored with them, and not edited after).
DEMO_DESCRIPTIONS = {
    "math": "Math problems: arithmetic, algebra, word problems, equations and proofs.",
    "sql": "Writing SQL queries against database tables and schemas.",
    "science": "Science questions about physics, chemistry, biology and the natural world.",
    "code": "Programming: writing, explaining and debugging Python code.",
    "dialogue": "Casual conversation and replies in an everyday chat.",
}


TASK_SETS = {
    "paired": TaskSet(
        20261124,
        {
            "chess": (("checkmate_in_one",), ("chess_state_tracking/real_short",)),
            "units": (("unit_conversion/si_conversion",), ("unit_interpretation/lv1",)),
            "physics": (("physics",), ("physics_questions",)),
            "dates": (("date_understanding",), ("temporal_sequences",)),
            "movies": (("movie_recommendation",), ("emoji_movie",)),
        },
        (("simple_ethical_questions", 40), ("sports_understanding", 40), ("social_support", 40)),
        {
            "chess": "Chess: moves, positions, checkmates and games in algebraic notation.",
            "units": "Converting and comparing units of measurement.",
            "physics": "Physics problems and questions: forces, energy, motion, electricity.",
            "dates": "Reasoning about dates, calendars, days and times.",
            "movies": "Movies: recommendations, titles and films people like.",
        },
    ),
    "styles": TaskSet(
        20261125,
        {
            "code": (("code_line_description",), ("auto_debugging",)),
            "editing": (("tense",), ("simple_text_editing", "word_sorting")),
            "puzzles": (("logic_grid_puzzle",), ("logical_deduction/three_objects",)),
            "factcheck": (
                ("fact_checker/fever",),
                ("fact_checker/politifact", "fact_checker/covid19_scientific"),
            ),
        },
        (("strategyqa", 40), ("general_knowledge", 40), ("crass_ai", 40)),
        {
            "code": "Python code: what a program does, its output, errors and values.",
            "editing": "Editing a text as instructed: rewrite, reorder, sort, replace or change "
            "its words and grammar.",
            "puzzles": "Logic puzzles: deduce the order or arrangement of people and objects "
            "from clues.",
            "factcheck": "Checking whether a claim or statement is true or false.",
        },
    ),
    HELD_OUT: TaskSet(
        20261126,
        {
            "booking": (("gem/schema_guided_dialog",), ("few_shot_nlg",)),
            "howto": (("goal_step_wikihow/step_inference",), ("goal_step_wikihow/step_ordering",)),
            "stories": (
                ("abstract_narrative_understanding/4_distractors",),
                ("minute_mysteries_qa/freetext",),
            ),
        },
        (("topical_chat", 60), ("timedial", 60)),
        {
            "booking": "Booking and scheduling services in a chat: reservations, appointments, "
            "tickets, rides, and their dates and times.",
            "howto": "How to do everyday tasks: steps and instructions.",
            "stories": "Short stories and narratives: what happens, who did it and why.",
        },
    ),
}

_SPEAKER_1 = re.compile(r"Speaker 1: '(.*?)' Speaker 2")
_CLAIM = re.compile(r"claim was made: (.*?)\s*Q: Was this claim true or false\?", re.S)
_CONTEXT_USER = re.compile(r"context = user:(.*)$", re.S)
_LAST_USER = re.compile(r'user: "([^"]*)"\.\s*$')
_LAST_AGENT_TURN = re.compile(r'agent_[AB]: "([^"]*)"\s*$')
_WIKIHOW_GOAL = re.compile(r"The most reasonable step of '(.*)' is")


def _last_line(text: str) -> str | None:
    lines = [line.split(":", 1)[-1].strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return None if "<MASK>" in last else last


def _match(pattern: re.Pattern[str], text: str, template: str = "{}") -> str | None:
    found = pattern.search(text)
    return template.format(found.group(1)) if found else None


# How a task's input becomes a request as a user would send it (its task framing removed,
# a chat reduced to its last user turn: what the router sees of a chat).
_FRAMINGS: dict[str, Callable[[str], str | None]] = {
    "implicatures": lambda t: _match(_SPEAKER_1, t),
    "movie_recommendation": lambda t: f"Find a movie similar to {t.rstrip(':')}",
    "sports_understanding": lambda t: f"Is this plausible? {t}",
    "word_sorting": lambda t: f"Sort these words alphabetically: {t}",
    "fact_checker/fever": lambda t: _match(_CLAIM, t, "Is it true that {}?"),
    "fact_checker/politifact": lambda t: _match(_CLAIM, t, "Fact-check this: {}"),
    "fact_checker/covid19_scientific": lambda t: _match(_CLAIM, t, "Fact-check this: {}"),
    "gem/schema_guided_dialog": lambda t: _match(_LAST_USER, t),
    "few_shot_nlg": lambda t: _match(_CONTEXT_USER, t),
    "goal_step_wikihow/step_inference": lambda t: _match(_WIKIHOW_GOAL, t, "How do I {}?"),
    "topical_chat": lambda t: _match(_LAST_AGENT_TURN, t),
    "timedial": _last_line,
}


def request_from(task: str, text: str) -> str | None:
    """A task input as a user would send it, or None where the input has no usable request."""
    text = text.strip()
    if task.startswith("hhh_alignment"):
        return general_request(text)
    if task in _FRAMINGS:
        return _FRAMINGS[task](text)
    return text.removeprefix("Question: ").removeprefix("Utterance: ").strip()


class Tasks:
    def __init__(self, sdist: Path) -> None:
        self.archive = tarfile.open(sdist)  # noqa: SIM115  (open for the whole run)

    def each_task(self) -> Iterator[tuple[str, list[dict[str, Any]], set[str]]]:
        """Every task (or subtask), its examples and its keywords, in one pass over the
        archive (reading members out of order would decompress it again for each)."""
        for member in self.archive:
            if member.name.startswith(TASKS) and member.name.endswith("/task.json"):
                data = self.archive.extractfile(member)
                assert data is not None, member.name
                task = json.load(data)
                name = member.name[len(TASKS) : -len("/task.json")]
                yield name, task.get("examples", []), set(task.get("keywords", []))

    def requests_from(
        self, task: str, examples: list[dict[str, Any]], count: int, rng: random.Random
    ) -> list[str]:
        made = [request_from(task, e["input"]) for e in examples if isinstance(e.get("input"), str)]
        unique = sorted({" ".join(m.split()) for m in made if m})
        return rng.sample(unique, min(count, len(unique)))

    def inputs(self, task: str) -> list[dict[str, Any]]:
        member = self.archive.extractfile(f"{TASKS}{task}/task.json")
        assert member is not None, task
        examples: list[dict[str, Any]] = json.load(member)["examples"]
        return examples

    def requests(self, task: str, count: int, rng: random.Random) -> list[str]:
        return self.requests_from(task, self.inputs(task), count, rng)


def jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
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
        jsonl(out / "routes.jsonl", routes),
        jsonl(out / "calibration.jsonl", held_out),
        jsonl(out / "test.jsonl", test),
    )


def build_demo(tasks: Tasks, out: Path) -> tuple[Path, Path, Path]:
    """The demo domains: 50 training requests per domain as its routes (the sample the trainer
    stores in each manifest), 100 of its eval requests held out; the test from `TEST_SOURCES`."""
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


def build_task_set(spec: TaskSet, tasks: Tasks, out: Path) -> tuple[Path, Path, Path]:
    """50 requests from a route's example tasks are its examples, up to 100 more its held-out
    split; 60 from its test tasks (shared between them) its test rows."""
    rng = random.Random(spec.seed)
    routes: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for route, (sources, targets) in spec.routes.items():
        pool = [r for s in sources for r in tasks.requests(s, 150 // len(sources), rng)]
        routes += [{"name": route, "text": t} for t in pool[:50]]
        held_out += [{"text": t, "expected": route} for t in pool[50:]]
        test += [
            {"text": t, "expected": route}
            for target in targets
            for t in tasks.requests(target, 60 // len(targets), rng)
        ]
    _add_negatives(tasks, rng, routes, held_out)
    test += [
        {"text": t, "expected": "base"}
        for task, count in spec.general
        for t in tasks.requests(task, count, rng)
    ]
    return _write(out, routes, held_out, test)


def build(name: str, tasks: Tasks, out: Path) -> tuple[Path, Path, Path]:
    """The set `name` (`demo` or a `TASK_SETS` key) written under `out`."""
    if name == "demo":
        return build_demo(tasks, out)
    return build_task_set(TASK_SETS[name], tasks, out)


SET_NAMES = ("demo", *TASK_SETS)


def descriptions(name: str) -> dict[str, str]:
    return DEMO_DESCRIPTIONS if name == "demo" else TASK_SETS[name].descriptions
