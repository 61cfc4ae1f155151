"""Content-addressed blob stores for adapter files: one small interface, one class per
backend, chosen from the registry's blob URL in one place (`open_blob_store`).

- local (the default): `$SWITCHBOARD_HOME/blobs/sha256/ab/abcd…` (`local.py`);
- any S3-compatible object store (AWS S3, MinIO, Ceph RGW, GCS's S3 interop):
  `s3://bucket/prefix` (`s3.py`); endpoint and credentials come the way S3 clients take them
  (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, … or explicit `blob_options`).

Blobs are keyed by their sha256; `put` is idempotent and repairs a damaged copy. Nothing is
handed out unverified: `fetch` hashes what it copies and refuses bytes that do not match.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from switchboard_lora.registry.blobs.base import (
    DEFAULT_TIMEOUT_S,
    BlobStore,
    StoredBlob,
    integrity,
)
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

__all__ = ["BlobStore", "StoredBlob", "integrity", "open_blob_store"]


def open_blob_store(
    url: str | None,
    home: Path,
    options: Mapping[str, str] = {},
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> BlobStore:
    """The store a registry's blob URL names: none or `file://…` is a local folder (default
    `home/blobs`), `s3://bucket/prefix` an object store (each call bounded by `timeout_s`)."""
    from switchboard_lora.registry.blobs.local import LocalBlobStore

    if url is None:
        return LocalBlobStore(home / "blobs")
    scheme, _, rest = url.partition("://")
    if scheme == "file" and rest:
        return LocalBlobStore(Path(rest))
    if scheme == "s3" and rest:
        from switchboard_lora.registry.blobs.s3 import S3BlobStore

        return S3BlobStore.from_url(url, options, timeout_s)
    raise SwitchboardError(
        ErrorCode.INVALID_INPUT,
        f"blob URL {url!r}: use s3://BUCKET[/PREFIX] or file:///PATH (default: local files)",
    )
