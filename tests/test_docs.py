"""Nothing a user can set or run is undocumented: every `SWITCHBOARD_*` variable the code
reads and every CLI command appear in the guides under docs/, and README stays short."""

from __future__ import annotations

import re

import typer.main

from support.paths import ROOT, package_folders
from switchboard_lora.cli.main import app
from switchboard_lora.serving.settings import ServerSettings

DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
CODE = (*package_folders(), "scripts", "bench", "tests", "support", "evaluation")


def _commands(command: object, path: list[str]) -> list[str]:
    children = getattr(command, "commands", None)
    if not children:
        return [" ".join(path)]
    return [c for name, sub in children.items() for c in _commands(sub, [*path, name])]


def _read_variables() -> set[str]:
    found: set[str] = set()
    for folder in CODE:
        for file in (ROOT / folder).rglob("*"):
            if file.suffix in {".py", ".sh"}:
                found |= set(re.findall(r"SWITCHBOARD_[A-Z0-9_]*[A-Z0-9]", file.read_text()))
    return found


def test_every_setting_is_documented() -> None:
    # the plain model: the environment's `Settings` is it, read from SWITCHBOARD_*
    settings = {f"SWITCHBOARD_{name.upper()}" for name in ServerSettings.model_fields}
    assert len(settings) > 30  # the walk sees the real settings class
    missing = sorted(n for n in settings | _read_variables() if not re.search(rf"\b{n}\b", DOCS))
    assert missing == []


def test_every_cli_command_is_documented() -> None:
    commands = _commands(typer.main.get_command(app), ["switchboard"])
    assert "switchboard registry alias set" in commands and len(commands) > 30
    assert sorted(c for c in commands if c not in DOCS) == []


def test_readme_is_a_short_page_that_links_every_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for guide in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{guide.name}" in readme, guide.name
