"""A version's files: stored content-addressed on publish, handed out verified.

Publishing hashes an adapter directory's files, checks them against what its manifest draft
claims, and puts them in the blob store before any row is written. Handing a version to an
engine (`checkout`) or to a user (`export`) copies blobs out and re-hashes them on the way:
a corrupted or missing file is an integrity error, never a loaded adapter.

Checkouts are this machine's cache of versions (for an object store, what it downloaded).
A process *holds* each version it checked out (a shared `flock` on a lock file, released when
it closes the registry or dies); past `max_bytes`, the least recently used versions that no
process holds are removed, never one in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from filelock import FileLock

from switchboard_lora.registry.blobs import BlobStore
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.installs import remove_whole, swap_in
from switchboard_lora.registry.manifest import MANIFEST_FILE, FileEntry, ManifestDraft
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.tensors import sha256_file

log = logging.getLogger(__name__)

_HOLDS = ".holds"  # lock files (holds and builds), per version, beside the checkouts


def content_digest(files: dict[str, FileEntry]) -> str:
    """sha256 over (path, file sha256) pairs: what makes a served name unique per content."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path].sha256}\n".encode())
    return digest.hexdigest()


def store_files(
    blobs: BlobStore, source: Path, paths: Iterable[str], draft: ManifestDraft
) -> dict[str, FileEntry]:
    """Put `source`'s files in the blob store, after checking them against the draft's
    checksums (an exported copy carries them). Returns what the manifest records."""
    hashes = {rel: sha256_file(source / rel) for rel in paths}
    for rel, entry in sorted((draft.files or {}).items()):
        if rel not in hashes:  # not stored (the adapter's own files are always there)
            continue
        if hashes[rel] != entry.sha256:
            raise SwitchboardError(
                ErrorCode.INTEGRITY,
                f"{source}: checksum of {rel} does not match its manifest "
                f"({hashes[rel][:12]}… != {entry.sha256[:12]}…)",
            )
    files = {}
    for rel in hashes:
        sha, size = blobs.put(source / rel)
        if sha != hashes[rel]:
            raise SwitchboardError(ErrorCode.INTEGRITY, f"{source}: {rel} changed while read")
        files[rel] = FileEntry(sha256=sha, size=size)
    return files


def _verified(directory: Path, files: dict[str, FileEntry]) -> bool:
    try:
        return all(sha256_file(directory / p) == e.sha256 for p, e in files.items())
    except OSError:  # missing, or being replaced right now
        return False


def _size(directory: Path) -> int:
    try:
        return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    except OSError:  # removed meanwhile
        return 0


class VersionFiles:
    """Copies of versions' files on this machine, made from the blob store."""

    def __init__(self, blobs: BlobStore, checkouts: Path, max_bytes: int | None = None) -> None:
        self.blobs = blobs
        self.checkouts = checkouts
        self.max_bytes = max_bytes
        self._holds: dict[str, int] = {}  # served name -> the lock file this process holds
        self._holds_lock = threading.Lock()  # a server's threads hold a version once, not twice

    def hold(self, served_name: str) -> None:
        """Keep this version's checkout from eviction while this process runs (or `release`)."""
        with self._holds_lock:
            if served_name in self._holds:
                return
            fd = self._lock_file(f"{served_name}.lock")
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._holds[served_name] = fd

    def _lock_file(self, name: str) -> int:
        """An open descriptor on one of the lock files beside the checkouts (made if new)."""
        return os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o644)

    def _lock_path(self, name: str) -> Path:
        locks = self.checkouts / _HOLDS
        locks.mkdir(parents=True, exist_ok=True)
        return locks / name

    def release(self) -> None:
        with self._holds_lock:
            for fd in self._holds.values():
                os.close(fd)  # closing the file drops its lock
            self._holds.clear()

    def evict(self, keep: Path) -> list[str]:
        """Remove least recently used checkouts that no process holds until the cache fits
        `max_bytes` (`keep` stays). Returns the served names removed."""
        if self.max_bytes is None:
            return []
        entries = []
        for directory in self.checkouts.iterdir():
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            try:  # another process may evict it between the listing and here
                entries.append((directory.stat().st_mtime, directory, _size(directory)))
            except FileNotFoundError:
                continue
        total = sum(size for _, _, size in entries)
        removed = []
        for _, directory, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if directory == keep or directory.name in self._holds:
                continue
            if self._remove(directory):
                total -= size
                removed.append(directory.name)
        if total > self.max_bytes:
            log.warning(
                "checkout cache holds %d bytes, above its %d: the rest is in use",
                total,
                self.max_bytes,
            )
        if removed:
            log.info("evicted from the checkout cache: %s", ", ".join(removed))
        return removed

    def has_checkout(self, served_name: str) -> bool:
        return (self.checkouts / served_name).is_dir()

    def intact(self, served_name: str, files: dict[str, FileEntry]) -> bool:
        return _verified(self.checkouts / served_name, files)

    def drop(self, served_name: str) -> bool:
        """Remove this version's checkout now, unless a process holds it (then eviction
        takes it later). True when it was removed."""
        with self._holds_lock:
            if served_name in self._holds:
                os.close(self._holds.pop(served_name))
        directory = self.checkouts / served_name
        return directory.is_dir() and self._remove(directory)

    def _remove(self, directory: Path) -> bool:
        """Remove a checkout no process holds (tried under an exclusive lock on its hold)."""
        fd = self._lock_file(f"{directory.name}.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no process holds it
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            remove_whole(directory)
            return True
        except OSError:  # gone already (another process removed it)
            return False
        finally:
            os.close(fd)

    def checkout(
        self, info: VersionInfo, files: dict[str, FileEntry], manifest: Callable[[], str]
    ) -> Path:
        """A verified directory of the version's files (re-hashed on every call).

        Concurrent checkouts (threads of a server, other processes) must never remove a good
        directory under a reader. So a version's directory is built, or replaced, by one
        builder at a time (an exclusive lock) and only once it fails verification under that
        lock; it appears by renames, so a reader sees the whole old directory, the whole new
        one, or none (and then waits for the builder).
        """
        self.hold(info.served_name)  # first: an evicting process must not take it now
        target = self.checkouts / info.served_name
        if not _verified(target, files):
            with self._building(info.served_name):
                if not _verified(target, files):  # not rebuilt while this one waited
                    self._build(info, files, manifest(), target)
                    self.evict(keep=target)
        os.utime(target)  # recently used
        return target

    def _build(
        self, info: VersionInfo, files: dict[str, FileEntry], manifest: str, target: Path
    ) -> None:
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            self.materialise(info, files, manifest, staging)
            swap_in(staging, target)  # a damaged one goes
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _building(self, served_name: str) -> FileLock:
        """The version's build lock, as `install_once` takes one: a new lock object per call,
        so it excludes this process's threads as well as other processes."""
        return FileLock(str(self._lock_path(f"{served_name}.build")))

    def materialise(
        self, info: VersionInfo, files: dict[str, FileEntry], manifest: str, dest: Path
    ) -> None:
        """Write the version's files, verified, and its manifest into `dest`. The files are
        fetched at once: from an object store each is a round trip of its own."""
        dest.mkdir(parents=True, exist_ok=True)

        def fetch(item: tuple[str, FileEntry]) -> None:
            path, entry = item
            try:
                self.blobs.fetch(entry.sha256, entry.size, dest / path)
            except SwitchboardError as exc:
                if exc.code == ErrorCode.UNAVAILABLE:  # the store, not the version: a 503
                    raise
                raise SwitchboardError(
                    ErrorCode.INTEGRITY,
                    f"{info.ref} cannot be used: {path}: {exc.message}; "
                    "run `switchboard registry verify`",
                ) from exc

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
            list(pool.map(fetch, sorted(files.items())))  # the first error propagates
        (dest / MANIFEST_FILE).write_text(manifest)
