"""Embeddings of route examples, made once per encoder.

In memory every vector is keyed by its text's digest, so a registry change re-embeds only
texts not seen before. An adapter version's examples never change (versions are immutable),
so they are also kept on disk, one file per version under a folder named by the encoder's
identity: a restart, or another replica on the same home, loads them instead of encoding.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from switchboard_lora.registry.route_store import text_sha256
from switchboard_lora.router.encoder import Encoder

log = logging.getLogger(__name__)

# Sets every router of one encoder shares (the shipped general requests), embedded once per
# process: (encoder identity, set key) -> vectors.
_SHARED: dict[tuple[str, str], np.ndarray] = {}


class EmbeddingCache:
    def __init__(self, encoder: Encoder, directory: Path | None) -> None:
        self.encoder = encoder
        self.directory = directory / encoder.identity[:32] if directory else None
        self._vectors: dict[str, np.ndarray] = {}

    def vectors(self, texts: list[str], version_key: str | None = None) -> np.ndarray:
        """Rows for `texts`, in order. `version_key` (a served name) marks an immutable set
        that may be kept on disk."""
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        keys = [text_sha256(t) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self._vectors]
        if missing and version_key and self.directory:
            self._load(version_key, keys)
            missing = [i for i, k in enumerate(keys) if k not in self._vectors]
        if missing:
            fresh = self.encoder.encode([texts[i] for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                self._vectors[keys[i]] = vector
        if version_key and self.directory and (missing or not self._file(version_key).exists()):
            self._save(version_key, keys)
        return np.stack([self._vectors[k] for k in keys])

    def shared(
        self,
        texts: tuple[str, ...],
        key: str,
        shipped: Callable[[str], np.ndarray | None] = lambda identity: None,
    ) -> np.ndarray:
        """An immutable set that every router of this encoder uses (`key` names its content):
        once per process, the vectors `shipped` gives for this encoder's identity, else
        embedded and kept on disk like a version's examples."""
        found = _SHARED.get((self.encoder.identity, key))
        if found is None:
            found = shipped(self.encoder.identity)
            if found is None or found.shape != (len(texts), self.encoder.dim):
                found = self.vectors(list(texts), key)
            _SHARED[(self.encoder.identity, key)] = found
        return found

    def _file(self, version_key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{version_key}.npz"

    def _load(self, version_key: str, keys: list[str]) -> None:
        path = self._file(version_key)
        try:
            with np.load(path) as stored:
                if list(stored["keys"]) == keys and stored["vectors"].shape[0] == len(keys):
                    self._vectors.update(zip(keys, stored["vectors"], strict=True))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: re-embed
            log.warning("ignoring unreadable embedding cache %s: %s", path, exc)

    def _save(self, version_key: str, keys: list[str]) -> None:
        path = self._file(version_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.npz")
        try:
            np.savez(
                staging, keys=np.array(keys), vectors=np.stack([self._vectors[k] for k in keys])
            )
            staging.replace(path)  # atomic: readers see the old file or the whole new one
        except OSError as exc:  # a read-only home still routes, only slower to start
            log.warning("cannot write embedding cache %s: %s", path, exc)
        finally:
            with contextlib.suppress(OSError):
                staging.unlink()
