"""The checkout's paths: its root, the demo data, and the `switchboard` command of the
environment running the tests (so a subprocess runs this checkout's install)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))


def package_folders() -> dict[str, Path]:
    """Each folder of the checkout that ships in the package, and where it lies inside
    `switchboard_lora` (`registry` → `registry`, `switchboard` → the package itself), as
    pyproject.toml's `[tool.setuptools.package-dir]` maps them: the one statement of it."""
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {}
    for package, folder in mapping["package-dir"].items():
        inside = package.removeprefix("switchboard_lora").removeprefix(".")
        folders[folder] = Path(*inside.split(".")) if inside else Path()
    return folders
