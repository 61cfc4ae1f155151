"""The JSONL files the router reads (formats in docs/architecture.md). Every problem is
reported with its line number, and a file with any problem is refused whole: nothing half-read
is used.

- routes file: `{"name": ROUTE, "text": ...}` per line; `base` rows are negatives.
- labelled test file: `{"text": ..., "expected": ROUTE or "base"}` per line.
- examples file (`route add-examples NAME FILE`): `{"text": ...}` per line; a `name`, if
  present, must be NAME (so a routes file filtered to one route is accepted as is).
- labels file (`route label --file`): `{"id": LOGGED DECISION ID, "route": ROUTE or "base"}`
  per line (`route review --json` lists the ids).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.route_store import validate_route

_SHOWN = 5


def _rows(
    path: Path, fields: dict[str, str], check: Callable[[dict[str, Any]], str | None] | None = None
) -> list[dict[str, Any]]:
    """Rows with every field in `fields` (field -> what it means) a non-empty string, and
    that `check` finds nothing wrong with (it returns what is wrong, or None)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SwitchboardError(ErrorCode.NOT_FOUND, f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, f"cannot read {path}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: expected a JSON object")
            continue
        bad = [
            f"{field!r} ({meaning})"
            for field, meaning in fields.items()
            if not isinstance(row.get(field), str) or not row[field].strip()
        ]
        if bad:
            problems.append(f"line {number}: missing or empty {', '.join(bad)}")
            continue
        try:
            for field in ("name", "expected", "route"):
                if field in row:
                    validate_route(row[field])
        except SwitchboardError as exc:
            problems.append(f"line {number}: {exc.message}")
            continue
        if check is not None and (wrong := check(row)) is not None:
            problems.append(f"line {number}: {wrong}")
            continue
        rows.append({k: v.strip() if isinstance(v, str) else v for k, v in row.items()})
    if problems:
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT,
            f"{path}: {len(problems)} bad line(s), nothing used: "
            + "; ".join(problems[:_SHOWN])
            + more,
        )
    if not rows:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, f"{path} has no rows")
    return rows


def read_routes(path: Path) -> dict[str, list[str]]:
    """Route name -> its examples, in file order."""
    routes: dict[str, list[str]] = {}
    for row in _rows(path, {"name": "the route", "text": "an example request"}):
        routes.setdefault(row["name"], []).append(row["text"])
    return routes


def read_labelled(path: Path) -> list[tuple[str, str]]:
    """(text, expected route) pairs."""
    rows = _rows(path, {"text": "the request", "expected": 'the right route, or "base"'})
    return [(row["text"], row["expected"]) for row in rows]


def read_examples(path: Path, route: str) -> list[str]:
    rows = _rows(path, {"text": "an example request"})
    foreign = sorted({row["name"] for row in rows if row.get("name", route) != route})
    if foreign:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT,
            f"{path} has examples for {', '.join(foreign)}, not only {route}; "
            "split the file or drop its `name` fields",
        )
    return [row["text"] for row in rows]


def _decision_id(row: dict[str, Any]) -> str | None:
    value = row.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "'id' must be a logged decision's id (a positive integer)"
    return None


def read_labels(path: Path) -> list[tuple[int, str]]:
    """(logged decision id, route) pairs."""
    rows = _rows(path, {"route": 'the right route, or "base"'}, _decision_id)
    return [(row["id"], row["route"]) for row in rows]
