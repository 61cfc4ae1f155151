"""Blobs in an S3-compatible object store, through obstore (Rust's `object_store`: one small
wheel; streaming, multipart for large files; the standard `AWS_*` settings).

Keys are `PREFIX/sha256/ab/abcdef…`. An object appears whole or not at all (S3 writes are
atomic per object), so a killed upload leaves nothing but, at most, an unfinished multipart
upload that the bucket's lifecycle rules expire. Every read is hashed: an object whose bytes
do not match its key is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from switchboard_lora.registry.blobs.base import StoredBlob, integrity
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.tensors import sha256_file

_CHUNK = 8 << 20


class S3BlobStore:
    def __init__(self, store: Any, url: str) -> None:
        self._store = store
        self.url = url

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, str] = {}) -> S3BlobStore:
        """`s3://bucket/prefix`. `options` go to obstore on top of what the standard `AWS_*`
        variables say: `aws_*` keys are S3 settings (`aws_endpoint`, `aws_region`, …), the
        others HTTP client settings (`allow_http`, `timeout`, …)."""
        from obstore.store import from_url

        config: Any = {k: v for k, v in options.items() if k.startswith("aws_")} or None
        client: Any = {k: v for k, v in options.items() if not k.startswith("aws_")} or None
        try:
            store = from_url(url.rstrip("/"), config=config, client_options=client)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # its own errors, and a Rust panic for some bad keys
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"blob URL {url}: {exc}") from None
        return cls(store, url)

    @staticmethod
    def _key(sha256: str) -> str:
        return f"sha256/{sha256[:2]}/{sha256}"

    def put(self, source: Path) -> tuple[str, int]:
        """Upload `source` under its sha256. Always uploaded: that costs what checking an
        existing object would (a download), and replaces a damaged one."""
        import obstore

        sha = sha256_file(source)  # the key must be known before the upload starts
        uploaded, size = hashlib.sha256(), 0

        def chunks() -> Iterator[bytes]:  # what is uploaded is hashed on its way out
            nonlocal size
            with source.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    uploaded.update(chunk)
                    size += len(chunk)
                    yield chunk

        obstore.put(self._store, self._key(sha), chunks())
        if uploaded.hexdigest() != sha:  # the file changed while it was read
            raise SwitchboardError(ErrorCode.INTEGRITY, f"{source} changed while uploaded")
        return sha, size

    def _stream(self, sha256: str) -> Any:
        import obstore

        try:
            return obstore.get(self._store, self._key(sha256)).stream(min_chunk_size=_CHUNK)
        except FileNotFoundError:
            return None

    def check(self, sha256: str, size: int) -> str | None:
        stream = self._stream(sha256)
        if stream is None:
            return "missing"
        digest, seen = hashlib.sha256(), 0
        for chunk in stream:
            digest.update(chunk)
            seen += len(chunk)
        return _problem(sha256, size, digest.hexdigest(), seen)

    def fetch(self, sha256: str, size: int, dest: Path) -> None:
        """Download to `dest` while hashing; bytes that do not match are removed, refused."""
        stream = self._stream(sha256)
        if stream is None:
            raise integrity(sha256, "missing from the object store")
        digest, seen = hashlib.sha256(), 0
        with dest.open("wb") as out:
            for chunk in stream:
                digest.update(chunk)
                out.write(chunk)
                seen += len(chunk)
        problem = _problem(sha256, size, digest.hexdigest(), seen)
        if problem is not None:
            dest.unlink(missing_ok=True)
            raise integrity(sha256, problem)

    def stored(self) -> list[StoredBlob]:
        import obstore

        return [
            StoredBlob(
                meta["path"].rsplit("/", 1)[-1], meta["size"], meta["last_modified"].timestamp()
            )
            for batch in obstore.list(self._store, prefix="sha256/")
            for meta in batch
        ]

    def delete(self, key: str) -> None:
        import obstore

        obstore.delete(self._store, self._key(key))


def _problem(sha256: str, size: int, actual: str, seen: int) -> str | None:
    if seen != size:
        return f"size {seen}, expected {size}"
    if actual != sha256:
        return f"sha256 {actual[:12]}…, expected {sha256[:12]}…"
    return None
