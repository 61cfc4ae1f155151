"""Sentence encoders: the default one (installed as a package) and the local cache of others.

A cached encoder is a sentence-transformers directory under `$SWITCHBOARD_HOME/encoders/NAME`,
with a record of where it came from and the digest of its files (`directory_digest`), which
was checked against a pinned value when it was assembled. How one is fetched and assembled is
not the router's business: `switchboard_lora.encoder_pull` does that and calls `install`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.installs import install_once
from switchboard_lora.router.encoder import ENCODER_RECORD, default_model_dir, directory_digest

DEFAULT_ENCODER = "all-minilm-l6-v2"  # installed with Switchboard: nothing to pull


@dataclass(frozen=True, slots=True)
class EncoderInfo:
    id: str
    path: Path
    source: str
    digest: str | None  # the pinned digest it was verified against; None for the packaged one

    def to_json(self) -> dict[str, str | None]:
        return {"id": self.id, "path": str(self.path), "source": self.source, "digest": self.digest}


class EncoderModels:
    """The default encoder and the cache of pulled ones under `root`."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def default(self) -> EncoderInfo:
        return EncoderInfo(DEFAULT_ENCODER, default_model_dir(), "package", None)

    def list(self) -> list[EncoderInfo]:
        cached = sorted(self.root.glob(f"*/{ENCODER_RECORD}")) if self.root else []
        return [self.default(), *(self._from_record(r) for r in cached)]

    def get(self, spec: str | None) -> Path:
        """The model directory of `spec`: none or the default's name, a pulled encoder's name,
        or any sentence-transformers directory."""
        if spec is None or spec == DEFAULT_ENCODER:
            return default_model_dir()
        if "/" not in spec and self.root and (self.root / spec / ENCODER_RECORD).is_file():
            return self.root / spec
        path = Path(spec).expanduser()
        if path.is_dir():
            return path
        pulled = ", ".join(e.id for e in self.list())
        raise SwitchboardError(
            ErrorCode.NOT_FOUND,
            f"encoder {spec!r} is neither pulled (available: {pulled}) nor a directory; "
            "`switchboard encoder pull` fetches the known ones",
        )

    def install(
        self, name: str, source: str, digest: str, build: Callable[[Path, Path], None]
    ) -> tuple[EncoderInfo, bool]:
        """Put encoder `name` in the cache once: `build(out_dir, workdir)` writes a
        sentence-transformers directory whose files must have `digest`, else nothing is
        installed. Returns the encoder and whether it was built now."""
        if self.root is None:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "no encoder cache directory is set")

        def build_and_verify(out: Path, workdir: Path) -> dict[str, str]:
            build(out, workdir)
            found = directory_digest(out)
            if found != digest:
                raise SwitchboardError(
                    ErrorCode.INTEGRITY,
                    f"encoder {name} assembled from {source} has digest {found}, "
                    f"not the pinned {digest}: nothing installed",
                )
            return {"digest": digest}

        target, built = install_once(self.root, name, ENCODER_RECORD, source, build_and_verify)
        return self._from_record(target / ENCODER_RECORD), built

    def _from_record(self, record: Path) -> EncoderInfo:
        data = json.loads(record.read_text())
        return EncoderInfo(data["id"], record.parent, data["source"], data["digest"])
