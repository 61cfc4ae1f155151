"""The checkout's paths: its root, the demo data, and the `switchboard` command of the
environment running the tests (so a subprocess runs this checkout's install)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))
