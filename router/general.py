"""General requests shipped with the router: the `base` side of its gate.

A route set with no `base` examples still has to send a request that belongs to none of its
routes to the base. These requests (first human turns of Anthropic's hh-rlhf, MIT; see
`bench/data/routing/SOURCES.md`) stand for everything else: the scorer learns them as the
`base` class beside any examples an operator labels `base`. One that is close to a route's
own examples is left out of that fit, so an operator's domain that happens to be general
chat keeps its requests. Embedded once per encoder; the vectors are cached on disk beside the
manifests' (`cache.py`).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import numpy as np

GENERAL_REQUESTS = Path(__file__).with_name("data") / "general_requests.jsonl"
# Their vectors under the default encoder, shipped too (float16; `python -m
# bench.general_vectors` writes them): a first start, a CLI call or a new replica does not
# spend ~20 s of CPU embedding them. Another encoder embeds them once and caches them on disk.
SHIPPED_VECTORS = "general_requests.{identity}.f16.npy"
# A shipped request whose cosine to any route example reaches this is not a negative for
# that fit: it says the same as the route's own material.
NEAR_ROUTE_COSINE = 0.8


@cache
def general_requests() -> tuple[tuple[str, ...], str]:
    """The shipped requests and a key naming this file's content (for the vector cache)."""
    raw = GENERAL_REQUESTS.read_bytes()
    texts = tuple(json.loads(line)["text"] for line in raw.decode().splitlines() if line)
    return texts, "general-" + hashlib.sha256(raw).hexdigest()[:16]


def shipped_vectors(identity: str) -> np.ndarray | None:
    """The general requests' vectors under the encoder `identity`, if shipped."""
    path = GENERAL_REQUESTS.with_name(SHIPPED_VECTORS.format(identity=identity[:16]))
    if not path.is_file():
        return None
    return np.load(path).astype(np.float32)


def far_from(negatives: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """The rows of `negatives` whose cosine to every example stays below `NEAR_ROUTE_COSINE`."""
    if not len(negatives) or not len(examples):
        return negatives
    nearest = np.zeros(len(negatives), dtype=np.float32)
    for start in range(0, len(examples), 4096):  # bounded memory for large route sets
        block = negatives @ examples[start : start + 4096].T
        nearest = np.maximum(nearest, block.max(axis=1))
    return negatives[nearest < NEAR_ROUTE_COSINE]
