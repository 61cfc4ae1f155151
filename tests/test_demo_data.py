"""`switchboard data build` regenerates the committed demo data byte for byte."""

from __future__ import annotations

import filecmp
import json
import platform
import re
import subprocess
from pathlib import Path

import pytest

from support.paths import DATA, SWITCHBOARD

pytestmark = pytest.mark.slow


def test_data_build_regenerates_the_committed_extracts(tmp_path: Path) -> None:
    # The pip download cache lives in the user's home: keep it, so CI fetches the sdist once.
    out = tmp_path / "data"
    result = subprocess.run(
        [
            SWITCHBOARD,
            "--home",
            str(tmp_path / "home"),
            "data",
            "build",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0 and "could not download bigbench==1.0.0" in result.stderr:
        # PyPI's index here lost the 358 MB sdist in December 2026 (it lists only 0.0.1, which
        # holds no tasks): the extracts cannot be rebuilt without a copy. Say so, never pass.
        pytest.skip("the package index has no bigbench==1.0.0 sdist to rebuild from")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["domains"]
    assert set(counts) == {"math", "sql", "science", "code", "dialogue", "general"}
    assert all(c.get("train", 500) == 500 for c in counts.values())
    committed = sorted(p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file())
    built = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert built == committed
    # `code/` comes from the running Python's standard library: comparable on the same version.
    recorded = re.search(
        r"Python (\d+\.\d+\.\d+) standard library", (DATA / "SOURCES.md").read_text()
    )
    same_python = recorded is not None and recorded.group(1) == platform.python_version()
    compared = [p for p in committed if same_python or p.parts[0] not in ("code", "SOURCES.md")]
    different = [str(p) for p in compared if not filecmp.cmp(DATA / p, out / p, shallow=False)]
    assert different == []
