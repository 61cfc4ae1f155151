"""`switchboard demo --quick`: from an empty home to answers routed over HTTP, then again,
reusing what the first run made."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import quick_demo

from support.paths import SWITCHBOARD

pytestmark = pytest.mark.slow
DOMAINS = ["math", "sql", "science", "code", "dialogue"]


def test_demo_trains_publishes_serves_and_routes_then_reuses(
    pulled_base: object, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    bases = Path(pulled_base[0].root)  # type: ignore[index]  # the session's pulled base
    (home / "bases").parent.mkdir(parents=True)
    (home / "bases").symlink_to(bases)  # skip a second conversion; the rest starts empty

    first, log = quick_demo(home)
    assert first["adapters"] == {d: f"{d}:1" for d in DOMAINS}
    assert log.count("training 3 steps") == 5
    rows = first["rows"]
    assert isinstance(rows, list) and len(rows) == 8
    assert [r["expected"] for r in rows] == DOMAINS + ["base"] * 3
    for row in rows:
        assert row["answer"].strip(), row
        # As expected: a domain's request served by the version the demo published for it,
        # a general one by the plain base.
        wanted = "base" if row["expected"] == "base" else first["adapters"][row["expected"]]  # type: ignore[index]
        assert row["as_expected"] == (row["route"] == wanted)
        assert row["route"] == "base" or row["route"] in first["adapters"].values()  # type: ignore[union-attr]
        if row["route"] != "base":
            assert row["scores"][row["route"].split(":")[0]] == max(row["scores"].values())
    assert first["as_expected"] >= 6  # type: ignore[operator]

    again, log = quick_demo(home)
    assert again["adapters"] == first["adapters"]  # nothing retrained or republished
    assert log.count("reused") == 5 and "training" not in log
    assert [r["route"] for r in again["rows"]] == [r["route"] for r in rows]  # type: ignore[union-attr]


def test_demo_refuses_a_data_folder_without_demo_data_before_any_long_work(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [SWITCHBOARD, "--home", str(home), "demo", "--quick", "--data", str(empty), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert json.loads(result.stdout)["error"]["code"] == "not_found"
    assert f"{empty} lacks demo data" in result.stderr
    assert not (home / "bases").exists()  # nothing pulled, trained or published
