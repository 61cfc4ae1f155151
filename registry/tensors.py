"""Torch-free reading of safetensors files: tensor names, dtypes, shapes, and content hashes.

The registry checks adapter shapes against a base and fingerprints base weights without
importing torch, so it reads the safetensors header (an 8-byte little-endian length, then a
JSON table of `name -> {dtype, shape, data_offsets}`) and hashes the raw tensor bytes.

The header is not trusted: every tensor's dtype must be known, its byte range must lie in the
file, match its shape times its dtype's size, and overlap no other tensor's. A file that
passes loads in safetensors (and so in both engines); `nonfinite_tensors` then reads the
values themselves.
"""

from __future__ import annotations

import hashlib
import itertools
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
# Floating dtypes as unsigned integers, and the exponent bits that, all set, mean inf or NaN.
_FLOAT_BITS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000),
               "F64": ("<u8", 0x7FF0000000000000)}  # fmt: skip


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
            size = os.fstat(f.fileno()).st_size
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        base = 8 + header_len
        index = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            index[name] = _tensor(name, entry, base, size)
        _no_overlap(index)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SwitchboardError(
            ErrorCode.INVALID_ADAPTER, f"{path.name} is not a readable safetensors file: {exc}"
        ) from exc
    return index


def _tensor(name: str, entry: dict[str, Any], base: int, size: int) -> TensorInfo:
    dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"tensor {name}: unknown dtype {dtype!r}")
    if not all(isinstance(v, int) and v >= 0 for v in (*shape, start, end)):
        raise ValueError(f"tensor {name}: shape and offsets must be non-negative integers")
    if base + end > size or start > end:
        raise ValueError(f"tensor {name}: bytes {start}..{end} lie outside the file")
    if end - start != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise ValueError(
            f"tensor {name}: {end - start} bytes do not hold {dtype} of shape {list(shape)}"
        )
    return TensorInfo(dtype, tuple(shape), base + start, base + end)


def _no_overlap(index: dict[str, TensorInfo]) -> None:
    spans = sorted((t.start, t.end, n) for n, t in index.items() if t.end > t.start)
    for (_, end, name), (start, _, other) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"tensors {name} and {other} overlap")


def nonfinite_tensors(path: Path) -> list[str]:
    """Names of the floating-point tensors of a safetensors file holding inf or NaN."""
    import numpy as np

    bad = []
    with path.open("rb") as f:
        for name, info in sorted(read_tensor_index(path).items()):
            bits = _FLOAT_BITS.get(info.dtype)
            if bits is None:
                continue
            layout, exponent = bits
            f.seek(info.start)
            values = np.frombuffer(f.read(info.end - info.start), dtype=layout)
            if np.any((values & exponent) == exponent):
                bad.append(name)
    return bad


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
