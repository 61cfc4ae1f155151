"""Training data: JSONL in four formats, detected, validated and normalised.

Formats (one per file): chat `{"messages": [{"role", "content"}, ...]}` (the OpenAI shape; the
last message is the assistant's answer), prompt/completion `{"prompt", "completion"}`,
instruction `{"instruction", "input"?, "output"}` and plain text `{"text"}`. Bad rows are
reported with their line numbers; a file with too many of them is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

log = logging.getLogger(__name__)

Format = Literal["chat", "completion", "instruction", "text"]
_ROLES = {"system", "user", "assistant"}
_SHOWN_PROBLEMS = 10
# A row past this is refused before it is parsed: one line of a GiB would otherwise be read,
# parsed and tokenized whole (gigabytes) before truncation to the sequence length saw it.
MAX_ROW_BYTES = 1 << 20
_READ = 1 << 16


@dataclass(frozen=True, slots=True)
class Example:
    """One row, normalised: chat-like rows keep messages, the others a prompt + completion."""

    line: int
    messages: tuple[tuple[str, str], ...] = ()  # (role, content); last is the assistant's
    prompt: str = ""
    completion: str = ""

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def request(self) -> str:
        """What a user would send for this example: the router's raw material."""
        if self.messages:
            return next(c for r, c in reversed(self.messages[:-1]) if r == "user")
        return self.prompt or self.completion[:300]

    def canonical(self) -> str:
        body = {"messages": self.messages} if self.messages else [self.prompt, self.completion]
        return json.dumps(body, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Dataset:
    path: Path
    format: Format
    examples: tuple[Example, ...]
    problems: tuple[tuple[int, str], ...]  # (line, what is wrong), rows left out

    def head(self, rows: int) -> Dataset:
        """The first `rows` examples (the fingerprint follows: it covers the rows used)."""
        return Dataset(self.path, self.format, self.examples[:rows], self.problems)

    @property
    def fingerprint(self) -> str:
        """sha256 over the normalised rows used: unchanged by formatting or bad rows."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example.canonical().encode() + b"\n")
        return "sha256:" + digest.hexdigest()


def detect(row: dict[str, Any]) -> Format | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "completion"
    if "instruction" in row or "output" in row:
        return "instruction"
    if "text" in row:
        return "text"
    return None


def _text(row: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key, None if required else "")
    if value is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{key!r} is empty")
    return value


def _normalise(row: dict[str, Any], fmt: Format, line: int) -> Example:
    if fmt == "chat":
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        pairs = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise ValueError(f"messages[{i}] must be an object")
            role = message.get("role")
            if role not in _ROLES:
                raise ValueError(
                    f"messages[{i}].role must be one of {sorted(_ROLES)}, got {role!r}"
                )
            pairs.append((role, _text(message, "content")))
        if pairs[-1][0] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        if not any(role == "user" for role, _ in pairs[:-1]):
            raise ValueError("no user message before the answer")
        return Example(line, messages=tuple(pairs))
    if fmt == "instruction":
        instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Example(line, messages=(("user", user), ("assistant", _text(row, "output"))))
    if fmt == "completion":
        return Example(line, prompt=_text(row, "prompt"), completion=_text(row, "completion"))
    return Example(line, completion=_text(row, "text"))


def _lines(path: Path, max_row_bytes: int) -> Iterator[tuple[int, str | None]]:
    """(line number, its text), or None for a line over `max_row_bytes`: read in bounded
    pieces, so an oversized line is skipped without being held."""
    with path.open("rb") as f:
        for number in itertools.count(1):
            line = f.readline(max_row_bytes + 1)
            if not line:
                return
            if len(line) > max_row_bytes and not line.endswith(b"\n"):
                while (rest := f.readline(_READ)) and not rest.endswith(b"\n"):
                    pass  # the rest of the oversized line, dropped piece by piece
                yield number, None
                continue
            yield number, line.decode("utf-8")


def load_jsonl(
    path: Path, *, max_bad_fraction: float = 0.1, max_row_bytes: int = MAX_ROW_BYTES
) -> Dataset:
    """Read, detect, validate. Raises if the file is unreadable, empty or mostly bad; rows
    over `max_row_bytes` are bad rows."""
    rows: list[tuple[int, dict[str, Any], Format]] = []
    problems: list[tuple[int, str]] = []
    try:
        lines = list(_lines(path, max_row_bytes))
    except (OSError, UnicodeDecodeError) as exc:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, f"cannot read {path}: {exc}") from exc
    for number, text in lines:
        if text is None:
            problems.append((number, f"longer than the {max_row_bytes:,} bytes a row may hold"))
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append((number, f"not valid JSON ({exc.msg})"))
            continue
        fmt = detect(row) if isinstance(row, dict) else None
        if fmt is None:
            problems.append(
                (
                    number,
                    "not one of the formats: messages | prompt+completion | "
                    "instruction+output | text",
                )
            )
            continue
        rows.append((number, row, fmt))
    total = len(rows) + len(problems)
    if total == 0:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, f"{path} holds no rows")
    fmt = Counter(f for _, _, f in rows).most_common(1)[0][0] if rows else "text"
    examples = []
    for number, row, row_fmt in rows:
        if row_fmt != fmt:
            problems.append((number, f"a {row_fmt} row in a {fmt} file"))
            continue
        try:
            examples.append(_normalise(row, fmt, number))
        except ValueError as exc:
            problems.append((number, str(exc)))
    problems.sort()
    dataset = Dataset(path, fmt, tuple(examples), tuple(problems))
    if problems:
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:_SHOWN_PROBLEMS])
        more = f" (and {len(problems) - _SHOWN_PROBLEMS} more)" * (len(problems) > _SHOWN_PROBLEMS)
        share = len(problems) / total
        if share > max_bad_fraction or not examples:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"{path}: {len(problems)} of {total} rows are bad ({share:.0%}, more than the "
                f"{max_bad_fraction:.0%} allowed): {shown}{more}",
            )
        log.warning("%s: leaving out %d bad rows: %s%s", path, len(problems), shown, more)
    return dataset
