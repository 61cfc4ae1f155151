"""Cache directories that appear and disappear whole, however many processes ask at once.

`install_once` builds what is fetched and assembled on first use (base models, sentence
encoders); `swap_in` and `remove_whole` also serve the adapter checkouts (`registry.files`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from switchboard_lora.registry.refs import validate_name

log = logging.getLogger(__name__)


def install_once(
    root: Path,
    name: str,
    record: str,
    source: str,
    build: Callable[[Path, Path], dict[str, str]],
) -> tuple[Path, bool]:
    """`root/name`, built by `build(out_dir, workdir)` unless it is there already. Returns
    the directory and whether it was built now.

    `build` writes the directory and returns what the record holds beside its id, source and
    time; the record (`record`, JSON) is written last: its presence marks a directory
    complete. Two processes installing at once: one builds, the other waits and finds it. The
    directory appears by one rename, so a half-built one is never visible; a failed build
    leaves nothing behind.
    """
    validate_name(name, "cache entry name")
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if (target / record).is_file():
            return target, False
        staging = root / f".{name}.staging-{os.getpid()}"
        workdir = root / f".{name}.work-{os.getpid()}"
        for leftover in (staging, workdir):
            shutil.rmtree(leftover, ignore_errors=True)
        workdir.mkdir()
        try:
            fields = build(staging, workdir)
            written = {
                "id": name,
                "source": source,
                **fields,
                "created_at": datetime.now(UTC).isoformat(),
            }
            (staging / record).write_text(json.dumps(written, indent=2) + "\n")
            swap_in(staging, target)  # an incomplete one (no record) goes
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)
    log.info("%s installed into %s", name, target)
    return target, True


def swap_in(staging: Path, target: Path) -> None:
    """Put the built directory `staging` at `target` by one rename, after removing whole
    whatever is there. The caller holds the lock that makes it the only builder."""
    if target.exists() or target.is_symlink():
        remove_whole(target)
    staging.rename(target)


def remove_whole(directory: Path) -> None:
    """Remove `directory` by renaming it aside first, so that no reader finds it half
    removed. Raises `FileNotFoundError` where it is gone already."""
    doomed = directory.with_name(f".{directory.name}.removed-{uuid.uuid4().hex}")
    directory.rename(doomed)
    if doomed.is_symlink():
        doomed.unlink()
    else:
        shutil.rmtree(doomed, ignore_errors=True)
