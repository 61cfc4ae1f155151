"""Torch-free reading of safetensors files: tensor names, dtypes, shapes, and content hashes.

The registry checks adapter shapes against a base and fingerprints base weights without
importing torch, so it reads the safetensors header (an 8-byte little-endian length, then a
JSON table of `name -> {dtype, shape, data_offsets}`) and hashes the raw tensor bytes.

The header is not trusted, and is read as strictly as safetensors' own parser reads it (the
engines load with that parser, so a file it refuses is a 500 at load time): every dtype is
known, the tensors' byte ranges follow each other from the start of the data with no gap and
cover it to the file's end, each matches its shape times its dtype's size, and `__metadata__`
maps strings to strings. `tensor_magnitudes` then reads the values themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

_MAX_HEADER = 100 * 1024 * 1024
_CHUNK = 1 << 20
# Bytes per element of safetensors' dtypes.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
# The floating dtypes whose values can be read here (bfloat16 as the bits it is).
_FLOATS = {"F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8"}


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
            raw = f.read(header_len)
            size = os.fstat(f.fileno()).st_size
        if len(raw) != header_len or not raw.startswith(b"{"):
            raise ValueError("its header is not a JSON object")
        header = json.loads(raw, object_pairs_hook=_unique_keys)
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        _check_metadata(header.get("__metadata__", {}))
        base = 8 + header_len
        index = {
            name: _tensor(name, entry, base, size)
            for name, entry in header.items()
            if name != "__metadata__"
        }
        _contiguous(index, base, size)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SwitchboardError(
            ErrorCode.INVALID_ADAPTER, f"{path.name} is not a readable safetensors file: {exc}"
        ) from exc
    return index


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("its header names a key twice")
    return dict(pairs)


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("__metadata__ must map strings to strings")


def _tensor(name: str, entry: dict[str, Any], base: int, size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"tensor {name}: its entry is not a JSON object")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"tensor {name}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"tensor {name}: shape and data_offsets must be lists")
    start, end = offsets
    if not all(type(v) is int and v >= 0 for v in (*shape, start, end)):
        raise ValueError(f"tensor {name}: shape and offsets must be non-negative integers")
    if base + end > size or start > end:
        raise ValueError(f"tensor {name}: bytes {start}..{end} lie outside the file")
    if end - start != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise ValueError(
            f"tensor {name}: {end - start} bytes do not hold {dtype} of shape {list(shape)}"
        )
    return TensorInfo(dtype, tuple(shape), base + start, base + end)


def _contiguous(index: dict[str, TensorInfo], base: int, size: int) -> None:
    """The tensors' bytes follow each other from the data's start to the file's end."""
    at = base
    for start, end, name in sorted((t.start, t.end, n) for n, t in index.items()):
        if start != at:
            raise ValueError(
                f"tensor {name} starts at byte {start - base}, not {at - base}: a gap or an "
                "overlap between tensors"
            )
        at = end
    if at != size:
        raise ValueError(f"{size - at} bytes after the last tensor: the file is not all tensors")


def tensor_magnitudes(path: Path) -> dict[str, float]:
    """Each floating-point tensor's largest absolute value (inf or NaN when it holds one;
    NaN wins). Other dtypes are left out: callers refuse them by dtype."""
    import numpy as np

    found = {}
    with path.open("rb") as f:
        for name, info in sorted(read_tensor_index(path).items()):
            if info.dtype not in _FLOATS or info.end == info.start:
                continue
            f.seek(info.start)
            raw = np.frombuffer(f.read(info.end - info.start), dtype=_FLOATS[info.dtype])
            if info.dtype == "BF16":  # the top half of a float32
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            values = np.abs(raw.astype(np.float64))
            found[name] = math.nan if np.isnan(values).any() else float(values.max())
    return found


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
