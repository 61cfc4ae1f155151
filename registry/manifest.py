"""The Switchboard manifest: what the registry records about one adapter version.

It is a file read from and written to the outside (beside the PEFT files, never inside
`adapter_config.json`), so it is a pydantic model: unknown keys from newer versions are kept,
a missing required key is refused.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

MANIFEST_FILE = "switchboard_manifest.json"
SCHEMA_VERSION = 1

AdapterMethod = Literal["lora", "prefix"]
_TOOLS = ("switchboard-lora", "peft", "transformers", "torch")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class FileEntry(_Frozen):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class BaseRef(_Frozen):
    id: str = Field(description="the base model's name or path as the publisher gave it")
    fingerprint: str = Field(description="sha256 over the base tensors' names, shapes, bytes")


class DataInfo(_Frozen):
    fingerprint: str | None = Field(default=None, description="sha256 of the training data")
    examples: int | None = Field(default=None, ge=0, description="training examples used")


class Component(_Frozen):
    ref: str = Field(description="name:version of a component of a mixture")
    weight: float


class ManifestDraft(_Frozen):
    """What a producer (the trainer, an exported copy) may say about an adapter it hands in.

    Every field is optional; the registry fills in the rest and checks what is given.
    """

    description: str = ""
    base: BaseRef | None = None
    files: dict[str, FileEntry] | None = None
    data: DataInfo = DataInfo()
    metrics: dict[str, float] = {}
    hyperparameters: dict[str, Any] = {}
    routing_examples: list[str] = []
    components: list[Component] = []


class Manifest(_Frozen):
    schema_version: int = Field(ge=1)
    name: str
    version: int = Field(ge=1)
    method: AdapterMethod
    base: BaseRef
    files: dict[str, FileEntry]
    data: DataInfo
    created_at: str
    tools: dict[str, str]
    content_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    served_name: str
    rank: int | None = Field(default=None, description="LoRA rank (largest over modules)")
    alpha: float | None = None
    target_modules: list[str] = []
    num_virtual_tokens: int | None = Field(default=None, description="prefix tuning only")
    parent: str | None = Field(default=None, description="name:version this was retrained from")
    components: list[Component] = Field(default=[], description="for a mixture: its parts, weights")
    description: str = ""
    metrics: dict[str, float] = {}
    hyperparameters: dict[str, Any] = {}
    routing_examples: list[str] = []

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def parse_manifest(text: str | bytes, model: type[_Frozen], source: str) -> Any:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SwitchboardError(
            ErrorCode.INVALID_MANIFEST, f"invalid manifest in {source}: {problems}"
        ) from exc


def read_draft(adapter_dir: Path) -> ManifestDraft | None:
    """The manifest a directory carries beside its PEFT files, if any, read as a draft."""
    path = adapter_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    draft: ManifestDraft = parse_manifest(path.read_bytes(), ManifestDraft, str(path))
    return draft


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made and stored an adapter, as far as they are installed."""
    found = {}
    for dist in _TOOLS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
