"""General requests shipped with the router: the `base` side of its gate.

A route set with no `base` examples still has to send a request that belongs to none of its
routes to the base. These requests (first human turns of Anthropic's hh-rlhf, MIT; see
`bench/data/routing/SOURCES.md`) stand for everything else: the gate (`gate.py`) asks how a
request's nearness to its route compares with theirs. One that is close to a route's own
examples is left out, so an operator's domain that happens to be general chat keeps its
requests. Their vectors under the default encoder ship beside them; another encoder embeds
them once and caches them on disk beside the manifests' (`cache.py`).
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
