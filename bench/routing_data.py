"""Build the routing benchmark's committed extracts from local copies of their public sources.

    python -m bench.routing_data --sources DIR [--check]

`DIR` holds one copy per source repository, named `owner+name` (a checkout, or a bare git
directory such as `fetch` gives, read at the commit pinned below). A run never needs the
sources: benchmarks and tests read what this wrote (`bench/data/routing/`, and the general
requests the router ships, `router/data/general_requests.jsonl`). `--check` rebuilds into a
scratch folder and compares, byte for byte, with what is committed.

Every row keeps its source's own label (`label`) beside the route it is expected to go to, so a
test can check the one against the other without the sources (`tests/test_routing_data.py`).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from support.paths import ROOT

OUT = ROOT / "bench" / "data" / "routing"
SHIPPED = ROOT / "router" / "data" / "general_requests.jsonl"
SEED = 20261208
EXTRACTS = ("clinc.jsonl", "banking77.jsonl", "demo_test.jsonl", "spanning.jsonl")


@dataclass(frozen=True, slots=True)
class Source:
    repo: str  # owner/name
    commit: str
    licence: str
    paths: tuple[str, ...]


SOURCES = {
    "clinc": Source(
        "clinc/oos-eval",
        "828f8093932c8fe6ca7936c3d2e52903b1c523de",
        "CC BY 3.0",
        ("data/data_full.json", "data/domains.json"),
    ),
    "banking77": Source(
        "PolyAI-LDN/task-specific-datasets",
        "57ec275d8078af65b7731c2a98be812d844a6d6b",
        "CC BY 4.0",
        ("banking_data/train.csv", "banking_data/test.csv"),
    ),
    "svamp": Source(
        "arkilpatel/SVAMP", "689d7ccac74b9983a2ac7cc3b264f441b99e7c53", "MIT", ("SVAMP.json",)
    ),
    "gsm8k": Source(
        "openai/grade-school-math",
        "3101c7d5072418e28b9008a6636bde82a006892c",
        "MIT",
        ("grade_school_math/data/test.jsonl",),
    ),
    "bbh": Source(
        "suzgunmirac/BIG-Bench-Hard",
        "9ee07bd481feebf959a6b59d61ea57bdcf30964d",
        "MIT",
        ("bbh/*.json",),
    ),
    "scibench": Source(
        "mandyyyyii/scibench",
        "e14e0ca3d3db0f02928a18d435b9c3d15656a7c5",
        "MIT",
        ("dataset/original/*.json",),
    ),
    "sede": Source(
        "hirupert/sede",
        "2bf261248feb330889a9e84f74e33ff7df0d6a86",
        "Apache-2.0",
        ("data/sede/val.jsonl", "data/sede/test.jsonl"),
    ),
    "mbpp": Source(
        "microsoft/CodeT",
        "35f54d60b152cc31d134b788e702878ad613d9f7",
        "MIT (CodeT); MBPP: CC BY 4.0; HumanEval: MIT",
        (
            "CodeT/data/dataset/mbpp_sanitized_for_code_generation.jsonl",
            "CodeT/data/dataset/HumanEval_for_code_generation.jsonl",
        ),
    ),
    "hh-rlhf": Source(
        "anthropics/hh-rlhf",
        "354e5c3cb8960630860dd5774a6ac2a58313bf4d",
        "MIT",
        ("harmless-base/test.jsonl.gz",),
    ),
}

# CLINC's domains: `small_talk` is chit-chat (the demo's `dialogue` route); two intents of
# `utility` are arithmetic and unit conversion (the `math` route): neither is a general
# request for the demo set. The rest of CLINC's domains belong to no demo route.
CLINC_DIALOGUE = "small_talk"
CLINC_NOT_GENERAL = {"calculator", "measurement_conversion"}
# BIG-Bench Hard tasks that are general requests for the demo routes: reasoning, language
# and knowledge. Left out: arithmetic (multistep_arithmetic_two, object_counting), code-like
# notation (boolean_expressions, dyck_languages, geometric_shapes), text editing
# (word_sorting).
BBH_GENERAL = (
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "formal_fallacies",
    "hyperbaton",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "navigate",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
)
# SciBench's chemistry textbooks: plainly chemistry, so science, though numeric. Its physics
# (fund, class, thermo) and maths textbooks are left out: a mechanics problem is a maths word
# problem as much, and a label an operator could argue either way measures nothing.
SCIBENCH_SCIENCE = ("atkins", "chemmc", "quan", "matter")

PER_DOMAIN_SOURCE = 60  # demo set: requests per (route, source)
GENERAL_PER_SOURCE = 120  # demo set: general requests per source
CLINC_TRAIN_PER_INTENT = 20
CLINC_TEST_PER_INTENT = 10
BANKING_TRAIN_PER_INTENT = 20
BANKING_TEST_PER_INTENT = 10


class Reader:
    """Files of the source copies under `root`: a checkout, or a bare git dir at the commit."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        path = self.root / SOURCES[key].repo.replace("/", "+")
        if (path / "repo").is_dir():  # `fetch`'s layout: owner+name/repo is the git dir
            path = path / "repo"
        if not path.is_dir():
            raise SystemExit(f"no copy of {SOURCES[key].repo} under {self.root}")
        return path

    def _git(self, key: str) -> Path | None:
        path = self._dir(key)
        return path if (path / "HEAD").is_file() and (path / "objects").is_dir() else None

    def commit(self, key: str) -> str:
        """The pinned commit (a copy at another commit is refused: the extract would differ)."""
        git = self._git(key)
        args = ["git", f"--git-dir={git}"] if git else ["git", "-C", str(self._dir(key))]
        found = subprocess.run(
            [*args, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        pinned = SOURCES[key].commit
        if git is None and found != pinned:
            raise SystemExit(f"{self._dir(key)} is at {found}, not the pinned {pinned}")
        return pinned

    def read(self, key: str, path: str) -> bytes:
        git = self._git(key)
        if git is None:
            return (self._dir(key) / path).read_bytes()
        return subprocess.run(
            ["git", f"--git-dir={git}", "show", f"{self.commit(key)}:{path}"],
            check=True,
            capture_output=True,
        ).stdout

    def jsonl(self, key: str, path: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.read(key, path).splitlines() if line.strip()]


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text).strip()


def _sample(rows: list[Any], n: int, seed: str) -> list[Any]:
    rows = list(rows)
    random.Random(f"{SEED}/{seed}").shuffle(rows)
    return rows[:n]


def _row(
    text: str, expected: str, source: str, label: str, reference: str | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "text": _clean(text),
        "expected": expected,
        "source": source,
        "label": label,
    }
    if reference is not None:
        row["reference"] = reference.strip()
    return row


def clinc(reader: Reader) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """CLINC150's in-scope train and test splits (its `oos_*` splits are left out): a fixed
    sample per intent, each row with its intent and domain."""
    data = json.loads(reader.read("clinc", "data/data_full.json"))
    domains = json.loads(reader.read("clinc", "data/domains.json"))
    domain_of = {intent: domain for domain, intents in domains.items() for intent in intents}
    trained = {text.casefold() for text, _ in data["train"]}
    rows = []
    for split, per_intent in (("train", CLINC_TRAIN_PER_INTENT), ("test", CLINC_TEST_PER_INTENT)):
        by_intent: dict[str, list[str]] = {}
        for text, intent in data[split]:
            if split == "train" or text.casefold() not in trained:  # a test row is new
                by_intent.setdefault(intent, []).append(text)
        for intent in sorted(by_intent):
            for text in _sample(by_intent[intent], per_intent, f"clinc/{split}/{intent}"):
                rows.append(
                    {
                        "text": _clean(text),
                        "intent": intent,
                        "domain": domain_of[intent],
                        "split": split,
                    }
                )
    return rows, domain_of


def banking77(reader: Reader) -> list[dict[str, Any]]:
    tables = {
        split: list(
            csv.DictReader(
                io.StringIO(reader.read("banking77", f"banking_data/{split}.csv").decode())
            )
        )
        for split in ("train", "test")
    }
    trained = {record["text"].casefold() for record in tables["train"]}
    rows = []
    for split, per_intent in (
        ("train", BANKING_TRAIN_PER_INTENT),
        ("test", BANKING_TEST_PER_INTENT),
    ):
        by_intent: dict[str, list[str]] = {}
        for record in tables[split]:
            if split == "train" or record["text"].casefold() not in trained:  # a test row is new
                by_intent.setdefault(record["category"], []).append(record["text"])
        for intent in sorted(by_intent):
            for text in _sample(by_intent[intent], per_intent, f"banking77/{split}/{intent}"):
                rows.append({"text": _clean(text), "intent": intent, "split": split})
    return rows


def _final_number(answer: str) -> str:
    return answer.rsplit("####", 1)[-1].strip()


def demo_test(reader: Reader, clinc_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests for the demo's routes from sources other than the demo data, and general
    requests that belong to none; with reference answers where the source has them."""
    rows: list[dict[str, Any]] = []
    svamp = json.loads(reader.read("svamp", "SVAMP.json"))
    for item in _sample(svamp, PER_DOMAIN_SOURCE, "svamp"):
        text = f"{item['Body'].strip()} {item['Question'].strip()}"
        answer = item["Answer"]
        number = str(int(answer)) if float(answer).is_integer() else str(answer)
        rows.append(_row(text, "math", "svamp", f"svamp:{item['Type']}", number))
    gsm = reader.jsonl("gsm8k", "grade_school_math/data/test.jsonl")
    for item in _sample(gsm, PER_DOMAIN_SOURCE, "gsm8k"):
        rows.append(_row(item["question"], "math", "gsm8k", "gsm8k", _final_number(item["answer"])))
    sede = [r for p in ("val", "test") for r in reader.jsonl("sede", f"data/sede/{p}.jsonl")]
    # Titles alone are often not requests ("Graph: Total questions by date"): a user asking an
    # assistant for a query says so, as the Data Explorer's own page does.
    seen: set[str] = set()
    unique = []
    for item in sede:
        if item["Title"] and item["Title"].strip().lower() not in seen:
            seen.add(item["Title"].strip().lower())
            unique.append(item)
    for item in _sample(unique, 2 * PER_DOMAIN_SOURCE, "sede"):
        text = f"SQL query on the Stack Exchange database: {item['Title'].strip()}"
        description = (item.get("Description") or "").strip()
        if description:
            text += f". {description}"
        rows.append(_row(text, "sql", "sede", "sede", item["QueryBody"]))
    science = []
    for subset in SCIBENCH_SCIENCE:
        for item in json.loads(reader.read("scibench", f"dataset/original/{subset}.json")):
            science.append((subset, item))
    for subset, item in _sample(science, PER_DOMAIN_SOURCE, "scibench"):
        answer = f"{item['answer_number']} {item.get('unit') or ''}".strip()
        rows.append(_row(item["problem_text"], "science", "scibench", f"scibench:{subset}", answer))
    mbpp = reader.jsonl("mbpp", "CodeT/data/dataset/mbpp_sanitized_for_code_generation.jsonl")
    for item in _sample(mbpp, PER_DOMAIN_SOURCE, "mbpp"):
        ask = item["prompt"].split("'''")[1] if "'''" in item["prompt"] else item["prompt"]
        rows.append(_row(ask, "code", "mbpp", "mbpp", item["canonical_solution"]))
    humaneval = reader.jsonl("mbpp", "CodeT/data/dataset/HumanEval_for_code_generation.jsonl")
    for item in _sample(humaneval, PER_DOMAIN_SOURCE, "humaneval"):
        text = f"Complete this Python function:\n{item['prompt'].strip()}"
        rows.append(_row(text, "code", "humaneval", "humaneval", item["canonical_solution"]))
    chat = [r for r in clinc_rows if r["domain"] == CLINC_DIALOGUE and r["split"] == "train"]
    for r in _sample(chat, 2 * PER_DOMAIN_SOURCE, "clinc-dialogue"):
        rows.append(_row(r["text"], "dialogue", "clinc", f"clinc:{r['domain']}"))
    bbh = []
    for task in BBH_GENERAL:
        examples = json.loads(reader.read("bbh", f"bbh/{task}.json"))["examples"]
        bbh += [(task, e) for e in _sample(examples, 20, f"bbh/{task}")]
    for task, example in _sample(bbh, GENERAL_PER_SOURCE, "bbh"):
        rows.append(_row(example["input"], "base", "bbh", f"bbh:{task}", example["target"]))
    general = [
        r
        for r in clinc_rows
        if r["domain"] != CLINC_DIALOGUE
        and r["intent"] not in CLINC_NOT_GENERAL
        and r["split"] == "test"
    ]
    for r in _sample(general, GENERAL_PER_SOURCE, "clinc-general"):
        rows.append(_row(r["text"], "base", "clinc", f"clinc:{r['domain']}"))
    return rows


# SciBench's physics textbooks: numeric physics problems, which span the demo's math and
# science domains (`bench.mixing`), with their answers (number and unit).
SCIBENCH_SPANNING = ("fund", "class", "thermo")


def spanning(reader: Reader) -> list[dict[str, Any]]:
    rows = []
    for subset in SCIBENCH_SPANNING:
        for item in json.loads(reader.read("scibench", f"dataset/original/{subset}.json")):
            answer = f"{item['answer_number']} {item.get('unit') or ''}".strip()
            rows.append(
                _row(item["problem_text"], "math+science", "scibench", f"scibench:{subset}", answer)
            )
    return rows


def first_turns(reader: Reader) -> list[dict[str, Any]]:
    """hh-rlhf's first human turns: general requests of every kind, shipped with the router
    as the `base` side of its gate. Short and very long ones, and repeats, are left out."""
    raw = gzip.decompress(reader.read("hh-rlhf", "harmless-base/test.jsonl.gz")).decode()
    seen: set[str] = set()
    rows = []
    for line in raw.splitlines():
        dialogue = json.loads(line)["chosen"]
        turn = dialogue.split("Human:", 1)[1].split("Assistant:", 1)[0]
        text = _clean(" ".join(turn.split()))
        key = text.lower()
        if 12 <= len(text) <= 400 and key not in seen:
            seen.add(key)
            rows.append({"text": text, "source": "hh-rlhf"})
    return rows


def _write(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def build(reader: Reader, out: Path, shipped: Path) -> dict[str, int]:
    clinc_rows, _ = clinc(reader)
    counts = {
        "clinc.jsonl": _write(out / "clinc.jsonl", clinc_rows),
        "banking77.jsonl": _write(out / "banking77.jsonl", banking77(reader)),
        "demo_test.jsonl": _write(out / "demo_test.jsonl", demo_test(reader, clinc_rows)),
        "spanning.jsonl": _write(out / "spanning.jsonl", spanning(reader)),
        "general_requests.jsonl": _write(shipped, first_turns(reader)),
    }
    return counts


def main(
    sources: Annotated[
        Path, typer.Option(help="Folder of source copies, one per repository (owner+name).")
    ],
    check: Annotated[bool, typer.Option(help="Rebuild into a scratch folder and compare.")] = False,
) -> None:
    reader = Reader(sources)
    if not check:
        for name, count in build(reader, OUT, SHIPPED).items():
            print(f"{name}: {count} rows")
        return
    with tempfile.TemporaryDirectory() as scratch:
        build(reader, Path(scratch), Path(scratch) / SHIPPED.name)
        differ = [
            name
            for name in EXTRACTS
            if (Path(scratch) / name).read_bytes() != (OUT / name).read_bytes()
        ]
        if (Path(scratch) / SHIPPED.name).read_bytes() != SHIPPED.read_bytes():
            differ.append(str(SHIPPED))
    if differ:
        sys.exit(f"differ from the committed extracts: {', '.join(differ)}")
    print("the committed extracts are what the sources give")


if __name__ == "__main__":
    typer.run(main)
