"""A version's files: stored content-addressed on publish, handed out verified.

Publishing hashes an adapter directory's files, checks them against what its manifest draft
claims, and puts them in the blob store before any row is written. Handing a version to an
engine (`checkout`) or to a user (`export`) copies blobs out and re-hashes them on the way:
a corrupted or missing file is an integrity error, never a loaded adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from registry.blobs import BlobStore
from registry.errors import ErrorCode, SwitchboardError
from registry.manifest import MANIFEST_FILE, FileEntry, ManifestDraft
from registry.records import VersionInfo
from registry.tensors import sha256_file

_CHECKOUT_ATTEMPTS = 5


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
        if rel not in hashes:
            raise SwitchboardError(
                ErrorCode.INTEGRITY, f"{source}: {rel} is in the manifest but missing"
            )
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


class VersionFiles:
    """Copies of versions' files on this machine, made from the blob store."""

    def __init__(self, blobs: BlobStore, checkouts: Path) -> None:
        self.blobs = blobs
        self.checkouts = checkouts

    def checkout(
        self, info: VersionInfo, files: dict[str, FileEntry], manifest: Callable[[], str]
    ) -> Path:
        """A verified directory of the version's files (re-hashed on every call).

        Concurrent checkouts (threads of a server, other processes) must never remove a good
        directory under a reader: a directory is replaced only when it fails verification,
        and then by renames, so a reader sees the old files, the new ones, or none (retry).
        """
        target = self.checkouts / info.served_name
        for _ in range(_CHECKOUT_ATTEMPTS):
            if _verified(target, files):
                return target
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            try:
                self.materialise(info, files, manifest(), staging)
                try:
                    staging.rename(target)
                    return target
                except OSError:  # a directory is there: someone else's, or a damaged one
                    if _verified(target, files):
                        return target
                    damaged = Path(f"{staging}.damaged")
                    with contextlib.suppress(OSError):
                        target.rename(damaged)
                    shutil.rmtree(damaged, ignore_errors=True)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        raise SwitchboardError(
            ErrorCode.CONFLICT, f"could not check out {info.ref}: its directory kept changing"
        )

    def materialise(
        self, info: VersionInfo, files: dict[str, FileEntry], manifest: str, dest: Path
    ) -> None:
        """Write the version's files, verified, and its manifest into `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        for path, entry in files.items():
            try:
                self.blobs.copy_out(entry.sha256, entry.size, dest / path)
            except SwitchboardError as exc:
                raise SwitchboardError(
                    ErrorCode.INTEGRITY,
                    f"{info.ref} cannot be used: {path}: {exc.message}; "
                    "run `switchboard registry verify`",
                ) from exc
        (dest / MANIFEST_FILE).write_text(manifest)
