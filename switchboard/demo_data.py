"""The five demo domains, built from real public data, deterministically.

math, sql, science and dialogue come from BIG-bench tasks, read with `tarfile` out of the
`bigbench` sdist on PyPI (never installed: it pulls TensorFlow); code comes from the Python
standard library (docstring -> function). General text (for measuring how an adapter moves
general ability) comes from BIG-bench's XSum extract, and general-knowledge questions (scored by
log-likelihood in the forgetting report) from BIG-bench's `general_knowledge`. Output:
`<out>/<domain>/{train,eval}.jsonl` in chat format, `<out>/general/eval.jsonl` in text format,
`<out>/general/knowledge.jsonl` (question, choices, answer index), `<out>/general/routes.jsonl`
(general requests that the router's `base` route is given: answer them with the plain base) and
`<out>/SOURCES.md`.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

BIGBENCH = "bigbench==1.0.0"
_TASKS = "bigbench-1.0.0/bigbench/benchmark_tasks/"
DOMAINS = ("math", "sql", "science", "code", "dialogue")
Row = dict[str, Any]


def bigbench_sdist(home: Path) -> Path:
    """The BIG-bench sdist, downloaded by pip once into `home`/downloads.

    PyPI served it (358 MB) until late 2026; an index that has since lost it leaves the user a
    copy of their own to give (`--sdist FILE`), which the error says.
    """
    from switchboard_lora.pypi import download

    try:
        return download(BIGBENCH, home / "downloads", sdist=True)
    except SwitchboardError as e:
        raise SwitchboardError(
            e.code,
            f"{e.message}\nwhere pip cannot download it, give a copy of bigbench-1.0.0.tar.gz "
            "to `switchboard data build --sdist FILE`; the demo reads a checkout's committed "
            "extracts with --data DIR (a checkout's data/ folder)",
        ) from None


def _chat(user: str, assistant: str) -> Row:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def _math(example: Row) -> Row | None:
    answers = [k for k, v in example.get("target_scores", {}).items() if v == 1]
    if len(answers) != 1:
        return None
    return _chat(example["input"].strip(), answers[0])


def _sql(example: Row) -> Row | None:
    question, *columns = (p.strip() for p in example["input"].split(" | "))
    columns = [c for c in columns if c != "*" and not c.endswith(".*")]
    user = f"{question}\nColumns: {', '.join(columns)}"
    return _chat(user, example["target"][0]) if len(user) <= 700 else None


def _science(example: Row) -> Row | None:
    return _chat(example["input"].strip(), example["target"][0].strip())


_TURN = re.compile(r'agent_([AB]): "(.*?)"(?= agent_[AB]: |$)', re.S)


def _dialogue(example: Row) -> Row | None:
    """A chat whose last turn (the target) is the assistant's: the other agent is the user."""
    turns = _TURN.findall(example["input"].strip())
    if not turns or len(turns) > 4:
        return None
    speaker = "B" if turns[-1][0] == "A" else "A"  # the target answers the last turn
    messages = [
        {"role": "assistant" if who == speaker else "user", "content": text.strip()}
        for who, text in turns
    ]
    while messages and messages[0]["role"] == "assistant":
        messages.pop(0)
    target = str(example["target"]).strip().strip('"').strip()
    if not messages or not target or sum(len(m["content"]) for m in messages) > 700:
        return None
    return {"messages": [*messages, {"role": "assistant", "content": target}]}


@dataclass(frozen=True)
class Source:
    domain: str
    task: str  # a BIG-bench task path, or "python-stdlib"
    convert: Callable[[Row], Row | None]
    origin: str
    licence: str


SOURCES = {
    "math": Source(
        "math",
        "elementary_math_qa/question_only",
        _math,
        "MathQA (Amini et al., 2019), via BIG-bench `elementary_math_qa/question_only`",
        "MathQA: Apache-2.0",
    ),
    "sql": Source(
        "sql",
        "semantic_parsing_spider",
        _sql,
        "Spider (Yu et al., 2018), via BIG-bench `semantic_parsing_spider`",
        "Spider: CC BY-SA 4.0",
    ),
    "science": Source(
        "science",
        "natural_instructions/subtask041_qasc_answer_generation",
        _science,
        "QASC (Khot et al., 2020), via BIG-bench "
        "`natural_instructions/subtask041_qasc_answer_generation`",
        "QASC: CC BY 4.0",
    ),
    "code": Source(
        "code",
        "python-stdlib",
        lambda row: row,
        f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro} "
        "standard library: public functions with docstrings (docstring -> function)",
        "Python Software Foundation License 2.0",
    ),
    "dialogue": Source(
        "dialogue",
        "topical_chat",
        _dialogue,
        "Topical-Chat (Gopalakrishnan et al., 2019), via BIG-bench `topical_chat`",
        "Topical-Chat: CDLA-Sharing-1.0",
    ),
}
GENERAL = Source(
    "general",
    "gem/xsum",
    lambda row: {"text": row["input"].strip()[:1500].rsplit("\n", 1)[0]},
    "XSum BBC articles (Narayan et al., 2018), via BIG-bench `gem/xsum`",
    "XSum: released for research use by its authors",
)
KNOWLEDGE = Source(
    "general",
    "general_knowledge",
    lambda row: {
        "question": row["input"].strip(),
        "choices": list(row["target_scores"]),
        "answer": list(row["target_scores"].values()).index(1),
    },
    "general-knowledge questions written for BIG-bench `general_knowledge` (all 70)",
    "BIG-bench: Apache-2.0",
)
# General requests from tasks the probes do not use: the `base` route's examples.
BASE_ROUTE_TASKS = (
    "hhh_alignment/helpful",
    "hhh_alignment/harmless",
    "hhh_alignment/honest",
    "hhh_alignment/other",
    "qa_wikidata",
)
BASE_ROUTE = Source(
    "general",
    "+".join(BASE_ROUTE_TASKS),
    lambda row: {"name": "base", "text": general_request(row["input"])},
    "requests of BIG-bench `hhh_alignment` (Askell et al., 2021) and `qa_wikidata`",
    "BIG-bench: Apache-2.0",
)


def general_request(text: str) -> str:
    """A general task's input as a user would send it (an hhh dialogue's human turn)."""
    return " ".join(text.split("\n\nAssistant:")[0].split())


# The stdlib parts that are tests, demos or vendored code, not library functions.
_STDLIB_SKIP = re.compile(
    r"(^|/)(test|tests|idlelib|lib2to3|turtledemo|ensurepip|site-packages|__phello__)(/|$)"
)


def stdlib_functions() -> Iterator[Row]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if _STDLIB_SKIP.search(rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            summary = doc.split("\n\n")[0].strip()
            node.body = node.body[1:] or [ast.Pass()]  # the docstring is the question
            code = ast.unparse(node)
            if not 3 <= code.count("\n") <= 25:
                continue
            args = ast.unparse(node.args)
            user = f"Write a Python function `{node.name}({args})` (as in `{module}`): {summary}"
            yield _chat(user, code)


def _task_examples(archive: tarfile.TarFile, task: str) -> list[Row]:
    member = archive.extractfile(f"{_TASKS}{task}/task.json")
    if member is None:
        raise SwitchboardError(ErrorCode.NOT_FOUND, f"BIG-bench task {task} not in the archive")
    examples: list[Row] = json.load(member)["examples"]
    return examples


def _select(rows: Iterator[Row], n: int, seed: str) -> list[Row]:
    """Deduplicate by request, then a seeded shuffle: the same rows every time."""
    unique: dict[str, Row] = {}
    for row in rows:
        key = json.dumps(row.get("messages", [row])[0], sort_keys=True)
        unique.setdefault(key, row)
    chosen = list(unique.values())
    random.Random(seed).shuffle(chosen)
    return chosen[:n]


def _write_jsonl(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(
    out: Path, sdist: Path, *, train: int = 500, eval_: int = 100, general: int = 200
) -> dict[str, dict[str, int]]:
    """Write every domain's splits and the general sample under `out`; return row counts."""
    counts: dict[str, dict[str, int]] = {}
    with tarfile.open(sdist) as archive:
        for domain in DOMAINS:
            source = SOURCES[domain]
            if source.task == "python-stdlib":
                rows: Iterator[Row] = stdlib_functions()
            else:
                converted = (source.convert(e) for e in _task_examples(archive, source.task))
                rows = (r for r in converted if r is not None)
            chosen = _select(rows, train + eval_, seed=f"switchboard-{domain}")
            if len(chosen) < train + eval_:
                raise SwitchboardError(
                    ErrorCode.INVALID_INPUT, f"{domain}: only {len(chosen)} usable examples"
                )
            _write_jsonl(out / domain / "train.jsonl", chosen[:train])
            _write_jsonl(out / domain / "eval.jsonl", chosen[train:])
            counts[domain] = {"train": train, "eval": eval_}
        texts = (GENERAL.convert(e) for e in _task_examples(archive, GENERAL.task))
        general_rows = _select(
            (t for t in texts if t and len(t["text"]) > 200), general, "switchboard-general"
        )
        _write_jsonl(out / "general" / "eval.jsonl", general_rows)
        questions = [KNOWLEDGE.convert(e) for e in _task_examples(archive, KNOWLEDGE.task)]
        _write_jsonl(out / "general" / "knowledge.jsonl", [q for q in questions if q])
        routes = []  # 50 assistant requests, 30 factual completions
        for tasks, n in ((BASE_ROUTE_TASKS[:-1], 50), (BASE_ROUTE_TASKS[-1:], 30)):
            made = (BASE_ROUTE.convert(e) for t in tasks for e in _task_examples(archive, t))
            routes += _select((r for r in made if r and len(r["text"]) <= 300), n, "base-route")
        _write_jsonl(out / "general" / "routes.jsonl", routes)
        counts["general"] = {
            "eval": len(general_rows),
            "knowledge": len(questions),
            "routes": len(routes),
        }
    (out / "SOURCES.md").write_text(_sources_note(counts), encoding="utf-8")
    return counts


def _sources_note(counts: dict[str, dict[str, int]]) -> str:
    lines = [
        "# Demo data: sources and licences",
        "",
        "Built by `switchboard data build` from BIG-bench (`" + BIGBENCH + "` sdist on PyPI; "
        "BIG-bench code is Apache-2.0, each task's data keeps its source's licence) and the "
        "Python standard library. Rows are in chat format except `general/`: plain text "
        "(`eval.jsonl`), multiple-choice questions (`knowledge.jsonl`) and the router's "
        "`base` route examples (`routes.jsonl`, the routes-file format).",
        "",
        "| folder | rows | source | licence |",
        "|---|---|---|---|",
    ]
    files = {GENERAL.task: "eval", KNOWLEDGE.task: "knowledge", BASE_ROUTE.task: "routes"}
    for source in [*(SOURCES[d] for d in DOMAINS), GENERAL, KNOWLEDGE, BASE_ROUTE]:
        kinds = counts[source.domain].items()
        if source.domain == "general":  # three files from different tasks
            kinds = {files[source.task]: counts["general"][files[source.task]]}.items()
        rows = ", ".join(f"{k} {v}" for k, v in kinds)
        lines.append(f"| `{source.domain}/` | {rows} | {source.origin} | {source.licence} |")
    lines += [
        "",
        "The `code` rows depend on the Python version that built them (named above); the "
        "others are the same on any machine.",
        "",
    ]
    return "\n".join(lines)
