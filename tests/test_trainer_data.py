"""Training data: the four formats, bad rows with line numbers, mostly-bad files refused."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from support.paths import DATA
from switchboard_lora.registry import ErrorCode, SwitchboardError
from switchboard_lora.trainer.config import TrainConfig
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.encoding import length_grouped_batches
from switchboard_lora.trainer.loop import routing_sample, split


def _write(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


@pytest.mark.parametrize(
    ("row", "fmt", "request_text"),
    [
        (CHAT, "chat", "2+2?"),
        ({"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "completion", "Q: 2+2?\nA:"),
        (
            {"instruction": "Add.", "input": "2 and 2", "output": "4"},
            "instruction",
            "Add.\n\n2 and 2",
        ),
        ({"instruction": "Say hi.", "output": "hi"}, "instruction", "Say hi."),
        ({"text": "Plain prose about the sea."}, "text", "Plain prose about the sea."),
    ],
)
def test_formats_are_detected_and_normalised(
    tmp_path: Path, row: dict[str, Any], fmt: str, request_text: str
) -> None:
    dataset = load_jsonl(_write(tmp_path / "d.jsonl", [row] * 3))
    assert dataset.format == fmt
    assert len(dataset.examples) == 3 and dataset.problems == ()
    assert dataset.examples[0].request == request_text
    assert [e.line for e in dataset.examples] == [1, 2, 3]


def test_instruction_rows_become_chat(tmp_path: Path) -> None:
    row = {"instruction": "Add.", "input": "2 and 2", "output": "4"}
    example = load_jsonl(_write(tmp_path / "d.jsonl", [row])).examples[0]
    assert example.messages == (("user", "Add.\n\n2 and 2"), ("assistant", "4"))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not one of the formats"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role must be one of"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "no user message"),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
            "'content' is empty",
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
            "must be a string",
        ),
        ({"prompt": "only a prompt"}, "a completion row in a chat file"),
    ],
)
def test_bad_rows_are_reported_with_line_numbers(tmp_path: Path, bad: Any, reason: str) -> None:
    rows = [CHAT] * 12 + [bad]  # 1 bad row in 13 (7.7 %): under the 10 % default limit
    dataset = load_jsonl(_write(tmp_path / "d.jsonl", rows))
    assert len(dataset.examples) == 12
    assert len(dataset.problems) == 1
    line, why = dataset.problems[0]
    assert line == 13 and reason in why


def test_a_mostly_bad_file_is_refused(tmp_path: Path) -> None:
    rows = [CHAT, CHAT, {"prompt": 1, "completion": "x"}, "nope", {"messages": "x"}]
    with pytest.raises(SwitchboardError) as info:
        load_jsonl(_write(tmp_path / "d.jsonl", rows))
    assert info.value.code == ErrorCode.INVALID_INPUT
    message = info.value.message
    assert "3 of 5 rows are bad" in message and "line 4: not valid JSON" in message


def test_a_row_over_the_size_limit_is_a_bad_row_read_in_bounded_memory(tmp_path: Path) -> None:
    """Issue 34, item 25: one line of a GiB was read, parsed and tokenized whole (6.9 GB, then
    SIGABRT). A row past the limit is a bad row with its line number, never held whole."""
    path = tmp_path / "d.jsonl"
    huge = json.dumps(
        {"messages": [{"role": "user", "content": "x" * 3_000_000}, CHAT["messages"][1]]}
    )
    path.write_text("\n".join([json.dumps(CHAT)] * 12 + [huge, json.dumps(CHAT)]) + "\n")
    dataset = load_jsonl(path, max_row_bytes=1 << 20)
    assert len(dataset.examples) == 13
    assert dataset.problems == ((13, "longer than the 1,048,576 bytes a row may hold"),)
    alone = tmp_path / "alone.jsonl"
    alone.write_text(huge)  # no newline at the end: the last line too
    with pytest.raises(SwitchboardError, match="line 1: longer than the 1,048,576 bytes"):
        load_jsonl(alone)


def test_the_bad_row_limit_is_configurable(tmp_path: Path) -> None:
    rows = [CHAT] * 8 + ["x", "y"]
    path = _write(tmp_path / "d.jsonl", rows)
    with pytest.raises(SwitchboardError, match="2 of 10 rows are bad"):
        load_jsonl(path)
    assert len(load_jsonl(path, max_bad_fraction=0.25).examples) == 8


@pytest.mark.parametrize("content", ["", "\n\n", "{}\n"])
def test_empty_or_formatless_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(SwitchboardError):
        load_jsonl(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SwitchboardError, match="cannot read"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_fingerprint_ignores_formatting_and_bad_rows(tmp_path: Path) -> None:
    compact = _write(tmp_path / "a.jsonl", [CHAT, CHAT])
    spaced = tmp_path / "b.jsonl"
    spaced.write_text(
        json.dumps(CHAT, indent=None, separators=(" , ", " : ")) + "\n\n" + json.dumps(CHAT) + "\n"
    )
    assert load_jsonl(compact).fingerprint == load_jsonl(spaced).fingerprint
    other = _write(
        tmp_path / "c.jsonl",
        [
            CHAT,
            {**CHAT, "messages": [*CHAT["messages"][:1], {"role": "assistant", "content": "5"}]},
        ],
    )
    assert load_jsonl(other).fingerprint != load_jsonl(compact).fingerprint


def test_split_is_seeded_and_held_out() -> None:
    dataset = load_jsonl(DATA / "math" / "train.jsonl")
    train, held = split(dataset, TrainConfig(eval_fraction=0.1, seed=3))
    _again_train, again_held = split(dataset, TrainConfig(eval_fraction=0.1, seed=3))
    assert len(held) == 50 and len(train) == 450
    assert [e.line for e in held] == [e.line for e in again_held]
    assert not {e.line for e in held} & {e.line for e in train}
    assert [e.line for e in split(dataset, TrainConfig(seed=4))[1]] != [e.line for e in held]


def test_routing_sample_is_deduplicated_and_sized() -> None:
    examples = load_jsonl(DATA / "science" / "train.jsonl").examples
    sample = routing_sample(list(examples) * 2, 40, seed=0)
    assert len(sample) == 40 == len({s.casefold() for s in sample})
    assert routing_sample(examples, 40, seed=0) == sample
    assert routing_sample(examples, 5, seed=0) != routing_sample(examples, 5, seed=1)


def test_length_grouped_batches_cover_everything_once_with_little_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(10, 250) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 8, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(8 * max(lengths[i : i + 8]) for i in range(0, 1000, 8))
    assert padded < 0.75 * naive  # sorting inside chunks removes most padding


def test_train_config_validates() -> None:
    with pytest.raises(SwitchboardError, match="rank must be >= 1; lr must be > 0"):
        TrainConfig(rank=0, lr=-1.0)


def test_committed_demo_data_is_well_formed() -> None:
    for domain in ("math", "sql", "science", "code", "dialogue"):
        for part, n in (("train", 500), ("eval", 100)):
            dataset = load_jsonl(DATA / domain / f"{part}.jsonl", max_bad_fraction=0.0)
            assert dataset.format == "chat" and len(dataset.examples) == n
        train = {e.request for e in load_jsonl(DATA / domain / "train.jsonl").examples}
        held = {e.request for e in load_jsonl(DATA / domain / "eval.jsonl").examples}
        assert not train & held, f"{domain}: eval requests leak into train"
    general = load_jsonl(DATA / "general" / "eval.jsonl", max_bad_fraction=0.0)
    assert general.format == "text" and len(general.examples) == 200
