"""Base models: the local cache of bases, and any Hugging Face directory named by path.

A base is identified by its *fingerprint* (see `registry.tensors.fingerprint_tensors`): a hash
over every weight tensor's name, dtype, shape and bytes. The registry refuses an adapter whose
claimed base fingerprint differs from the base it is published against. How a base is obtained
(downloaded, converted) is not the registry's business: `switchboard_lora.base_pull` builds one and
`BaseModels.install` puts it in the cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.installs import install_once
from switchboard_lora.registry.refs import validate_name
from switchboard_lora.registry.tensors import fingerprint_tensors, read_tensor_index

BASE_RECORD = "switchboard_base.json"
DEFAULT_BASE = "smollm2-135m-instruct"


# The linear projections of a Llama-style block: what vLLM's LoRA path serves, and what
# Switchboard's adapters target by default.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
        cached_names = ", ".join(b.id for b in self.list()) or "none"
        raise SwitchboardError(
            ErrorCode.NOT_FOUND,
            f"base model {spec!r} is not available: not a cached base (cached: {cached_names}) "
            "nor a model directory",
        )

    def install(
        self, name: str, source: str, build: Callable[[Path, Path], None]
    ) -> tuple[BaseModelInfo, bool]:
        """Put base `name` in the cache once: `build(out_dir, workdir)` writes a model directory.
        Returns the base and whether it was built now (see `install_once`)."""
        validate_name(name, "base model name")

        def build_and_fingerprint(out: Path, workdir: Path) -> dict[str, str]:
            build(out, workdir)
            return {"fingerprint": fingerprint_tensors(weight_files(out))}

        target, built = install_once(self.root, name, BASE_RECORD, source, build_and_fingerprint)
        return self._from_record(target / BASE_RECORD), built

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
