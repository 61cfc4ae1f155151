"""Blobs in a local folder: `root/sha256/ab/abcdef…`, written atomically, read-only."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from switchboard_lora.registry.blobs.base import StoredBlob, integrity
from switchboard_lora.registry.tensors import sha256_file

_CHUNK = 1 << 20


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        self._tmp = root / "tmp"

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, source: Path) -> tuple[str, int]:
        """Copy `source` in, hashing as it goes. The copy lands under a temporary name and is
        renamed into place only once complete and synced, so a reader (or a crash) never
        sees a partial blob."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        tmp = Path(tmp_name)
        try:
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            sha = digest.hexdigest()
            if self.check(sha, size) is None:
                return sha, size  # already stored intact (a damaged copy is replaced below)
            final = self.path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(0o444)
            tmp.replace(final)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def check(self, sha256: str, size: int) -> str | None:
        path = self.path(sha256)
        if not path.is_file():
            return "missing"
        if path.stat().st_size != size:
            return f"size {path.stat().st_size}, expected {size}"
        actual = sha256_file(path)
        if actual != sha256:
            return f"sha256 {actual[:12]}…, expected {sha256[:12]}…"
        return None

    def fetch(self, sha256: str, size: int, dest: Path) -> None:
        problem = self.check(sha256, size)
        if problem is not None:
            raise integrity(sha256, problem)
        shutil.copyfile(self.path(sha256), dest)

    def stored(self) -> list[StoredBlob]:
        found = [p for p in (self.root / "sha256").glob("*/*") if p.is_file()]
        if self._tmp.is_dir():
            found += [p for p in self._tmp.iterdir() if p.is_file()]
        blobs = []
        for path in found:
            stat = path.stat()
            key = path.name if path.parent != self._tmp else f"tmp/{path.name}"
            blobs.append(StoredBlob(key, stat.st_size, stat.st_mtime))
        return blobs

    def delete(self, key: str) -> None:
        path = self._tmp / key[4:] if key.startswith("tmp/") else self.path(key)
        path.unlink(missing_ok=True)
