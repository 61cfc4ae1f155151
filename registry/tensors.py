"""Torch-free reading of safetensors files: tensor names, dtypes, shapes, and content hashes.

The registry checks adapter shapes against a base and fingerprints base weights without
importing torch, so it reads the safetensors header (an 8-byte little-endian length, then a
JSON table of `name -> {dtype, shape, data_offsets}`) and hashes the raw tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.errors import ErrorCode, SwitchboardError

_MAX_HEADER = 100 * 1024 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_tensor_index(path: Path) -> dict[str, TensorInfo]:
    """Return the tensors a safetensors file holds, without reading their data."""
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > _MAX_HEADER:
                raise ValueError(f"header length {header_len} is implausible")
            header = json.loads(f.read(header_len))
        base = 8 + header_len
        index = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            index[name] = TensorInfo(
                entry["dtype"], tuple(entry["shape"]), base + start, base + end
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SwitchboardError(
            ErrorCode.INVALID_ADAPTER, f"{path.name} is not a readable safetensors file: {exc}"
        ) from exc
    return index


def fingerprint_tensors(files: Iterable[Path]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    Independent of how the tensors are split across files and ordered inside them, so a
    re-saved or re-sharded copy of the same weights has the same fingerprint.
    """
    located: dict[str, tuple[Path, TensorInfo]] = {}
    for path in files:
        for name, info in read_tensor_index(path).items():
            located[name] = (path, info)
    digest = hashlib.sha256()
    with ExitStack() as stack:
        handles: dict[Path, BinaryIO] = {}
        for name in sorted(located):
            path, info = located[name]
            if path not in handles:
                handles[path] = stack.enter_context(path.open("rb"))
            f = handles[path]
            digest.update(f"{name}\0{info.dtype}\0{list(info.shape)}\0".encode())
            f.seek(info.start)
            remaining = info.end - info.start
            while remaining:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    raise SwitchboardError(
                        ErrorCode.INTEGRITY, f"{path.name} is truncated inside tensor {name}"
                    )
                digest.update(chunk)
                remaining -= len(chunk)
    return "sha256:" + digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
