"""Blobs in an S3-compatible object store, through obstore (Rust's `object_store`: one small
wheel; streaming, multipart for large files; the standard `AWS_*` settings).

Keys are `PREFIX/sha256/ab/abcdef…`. An object appears whole or not at all (S3 writes are
atomic per object), so a killed upload leaves nothing but, at most, an unfinished multipart
upload: `stored()` lists those too (through boto3, as obstore cannot), and `gc` aborts them.
Every read is hashed: an object whose bytes do not match its key is refused.

Every call is bounded: a request that gets no answer in `timeout_s` is retried until
`timeout_s` has passed since the first try, then fails as `unavailable` (a 503) naming the
store, never a hang or a bare 500.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from switchboard_lora.registry.blobs.base import DEFAULT_TIMEOUT_S, StoredBlob, integrity
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.tensors import sha256_file

log = logging.getLogger(__name__)
_CHUNK = 8 << 20
_UPLOAD = "multipart-upload:"  # the key of an unfinished upload in `stored()`: marker, key, id


class S3BlobStore:
    def __init__(
        self,
        store: Any,
        url: str,
        options: Mapping[str, str] = {},
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._store = store
        self.url = url
        self._options = dict(options)
        self._timeout_s = timeout_s

    @classmethod
    def from_url(
        cls, url: str, options: Mapping[str, str] = {}, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> S3BlobStore:
        """`s3://bucket/prefix`. `options` go to obstore on top of what the standard `AWS_*`
        variables say: `aws_*` keys are S3 settings (`aws_endpoint`, `aws_region`, …), the
        others HTTP client settings (`allow_http`, `timeout`, …). `timeout_s` bounds each
        request and, retries included, each call."""
        from obstore.store import from_url

        config: Any = {k: v for k, v in options.items() if k.startswith("aws_")} or None
        client: Any = {"timeout": f"{timeout_s}s", "connect_timeout": f"{min(timeout_s, 5)}s"}
        client |= {k: v for k, v in options.items() if not k.startswith("aws_")}
        retry: Any = {"max_retries": 3, "retry_timeout": timedelta(seconds=timeout_s)}
        try:
            store = from_url(
                url.rstrip("/"), config=config, client_options=client, retry_config=retry
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # its own errors, and a Rust panic for some bad keys
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"blob URL {url}: {exc}") from None
        return cls(store, url, options, timeout_s)

    @contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        """The object store's failures as what they are to a caller: it cannot be reached
        now (a 503 naming it), not an internal error. A missing object stays
        FileNotFoundError; our own refusals pass through."""
        try:
            yield
        except (SwitchboardError, FileNotFoundError):
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            raise SwitchboardError(
                ErrorCode.UNAVAILABLE, f"the object store {self.url} failed {what}: {reason}"
            ) from exc

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

        with self._reaching(f"to store {source.name}"):
            obstore.put(self._store, self._key(sha), chunks())
        if uploaded.hexdigest() != sha:  # the file changed while it was read
            raise SwitchboardError(ErrorCode.INTEGRITY, f"{source} changed while uploaded")
        return sha, size

    def _chunks(self, sha256: str) -> Iterator[bytes] | None:
        """The blob's bytes as they arrive (None: there is no such blob)."""
        import obstore

        with self._reaching(f"to send {sha256[:12]}…"):
            try:
                stream = obstore.get(self._store, self._key(sha256)).stream(min_chunk_size=_CHUNK)
            except FileNotFoundError:
                return None

        def chunks() -> Iterator[bytes]:
            with self._reaching(f"while sending {sha256[:12]}…"):
                yield from (bytes(chunk) for chunk in stream)

        return chunks()

    def check(self, sha256: str, size: int) -> str | None:
        stream = self._chunks(sha256)
        if stream is None:
            return "missing"
        digest, seen = hashlib.sha256(), 0
        for chunk in stream:
            digest.update(chunk)
            seen += len(chunk)
        return _problem(sha256, size, digest.hexdigest(), seen)

    def fetch(self, sha256: str, size: int, dest: Path) -> None:
        """Download to `dest` while hashing; bytes that do not match are removed, refused."""
        stream = self._chunks(sha256)
        if stream is None:
            raise integrity(sha256, "missing from the object store")
        digest, seen = hashlib.sha256(), 0
        try:
            with dest.open("wb") as out:
                for chunk in stream:
                    digest.update(chunk)
                    out.write(chunk)
                    seen += len(chunk)
        except SwitchboardError:
            dest.unlink(missing_ok=True)
            raise
        problem = _problem(sha256, size, digest.hexdigest(), seen)
        if problem is not None:
            dest.unlink(missing_ok=True)
            raise integrity(sha256, problem)

    def stored(self) -> list[StoredBlob]:
        """Every blob, and every multipart upload left unfinished (by a killed publish)."""
        import obstore

        with self._reaching("to list its files"):
            blobs = [
                StoredBlob(
                    meta["path"].rsplit("/", 1)[-1],
                    meta["size"],
                    meta["last_modified"].timestamp(),
                )
                for batch in obstore.list(self._store, prefix="sha256/")
                for meta in batch
            ]
        from botocore.exceptions import ClientError

        with self._reaching("to list unfinished uploads"):
            try:
                return blobs + self._unfinished()
            except ClientError as exc:  # refused (a policy without ListMultipartUploads)
                log.warning("%s: unfinished uploads not listed, so not removed: %s", self.url, exc)
                return blobs

    def delete(self, key: str) -> None:
        import obstore

        if key.startswith(_UPLOAD):
            object_key, _, upload_id = key.removeprefix(_UPLOAD).partition("?")
            with self._reaching(f"to abort the upload of {object_key}"):
                bucket, _ = self._bucket()
                self._s3.abort_multipart_upload(Bucket=bucket, Key=object_key, UploadId=upload_id)
            return
        with self._reaching(f"to delete {key[:12]}…"):
            obstore.delete(self._store, self._key(key))

    # ---- unfinished multipart uploads: boto3's, as obstore has no call for them --------

    def _bucket(self) -> tuple[str, str]:
        """(bucket, the prefix of the blobs' keys in it)."""
        parts = urlsplit(self.url)
        prefix = parts.path.strip("/")
        return parts.netloc, f"{prefix}/sha256/" if prefix else "sha256/"

    @cached_property
    def _s3(self) -> Any:
        """A boto3 client for the same bucket (made once, on first use): explicit options
        first, else the `AWS_*` environment boto3 reads itself."""
        import boto3
        from botocore.config import Config

        options, timeout = self._options, self._timeout_s
        return boto3.client(
            "s3",
            endpoint_url=options.get("aws_endpoint") or options.get("aws_endpoint_url"),
            region_name=options.get("aws_region") or options.get("aws_default_region"),
            aws_access_key_id=options.get("aws_access_key_id"),
            aws_secret_access_key=options.get("aws_secret_access_key"),
            aws_session_token=options.get("aws_session_token") or options.get("aws_token"),
            config=Config(
                connect_timeout=min(timeout, 5), read_timeout=timeout, retries={"max_attempts": 3}
            ),
        )

    def _unfinished(self) -> list[StoredBlob]:
        bucket, prefix = self._bucket()
        client = self._s3
        found = []
        uploads = client.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Prefix=prefix
        )
        for listing in uploads:
            for upload in listing.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                part_pages = client.get_paginator("list_parts").paginate(
                    Bucket=bucket, Key=key, UploadId=upload_id
                )
                parts = [part for page in part_pages for part in page.get("Parts", [])]
                # Its age is that of its last sign of life: an upload still sending parts
                # is in flight, however long ago it began.
                active = max(
                    [upload["Initiated"].timestamp()]
                    + [part["LastModified"].timestamp() for part in parts]
                )
                size = sum(part["Size"] for part in parts)
                found.append(StoredBlob(f"{_UPLOAD}{key}?{upload_id}", size, active))
        return found


def _problem(sha256: str, size: int, actual: str, seen: int) -> str | None:
    if seen != size:
        return f"size {seen}, expected {size}"
    if actual != sha256:
        return f"sha256 {actual[:12]}…, expected {sha256[:12]}…"
    return None
