"""Switchboard's registry, the bottom layer: versioned PEFT adapters, base models, refs,
routing examples and A/B tests in SQL, adapter files in a blob store. Imports no torch, no
web framework and no CLI kit; every other package builds on it.

Public names load on first use (PEP 562), so `import registry` and `switchboard --help`
stay fast; SQLAlchemy and pydantic load only when a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_BASE": "switchboard_lora.registry.bases",
    "BaseModelInfo": "switchboard_lora.registry.bases",
    "BaseModels": "switchboard_lora.registry.bases",
    "ErrorCode": "switchboard_lora.registry.errors",
    "SwitchboardError": "switchboard_lora.registry.errors",
    "MANIFEST_FILE": "switchboard_lora.registry.manifest",
    "Manifest": "switchboard_lora.registry.manifest",
    "ManifestDraft": "switchboard_lora.registry.manifest",
    "AdapterRef": "switchboard_lora.registry.refs",
    "served_name": "switchboard_lora.registry.refs",
    "validate_name": "switchboard_lora.registry.refs",
    "PROJECTIONS": "switchboard_lora.registry.bases",
    "RegistrySettings": "switchboard_lora.registry.settings",
    "AdapterSummary": "switchboard_lora.registry.records",
    "VerifyResult": "switchboard_lora.registry.records",
    "VersionInfo": "switchboard_lora.registry.records",
    "Registry": "switchboard_lora.registry.store",
    "open_registry": "switchboard_lora.registry.store",
}

__all__ = [
    "DEFAULT_BASE",
    "MANIFEST_FILE",
    "PROJECTIONS",
    "AdapterRef",
    "AdapterSummary",
    "BaseModelInfo",
    "BaseModels",
    "ErrorCode",
    "Manifest",
    "ManifestDraft",
    "Registry",
    "RegistrySettings",
    "SwitchboardError",
    "VerifyResult",
    "VersionInfo",
    "open_registry",
    "served_name",
    "validate_name",
]

if TYPE_CHECKING:
    from switchboard_lora.registry.bases import DEFAULT_BASE, PROJECTIONS, BaseModelInfo, BaseModels
    from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
    from switchboard_lora.registry.manifest import MANIFEST_FILE, Manifest, ManifestDraft
    from switchboard_lora.registry.records import AdapterSummary, VerifyResult, VersionInfo
    from switchboard_lora.registry.refs import AdapterRef, served_name, validate_name
    from switchboard_lora.registry.settings import RegistrySettings
    from switchboard_lora.registry.store import Registry, open_registry


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
