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
    "DEFAULT_BASE": "registry.bases",
    "BaseModelInfo": "registry.bases",
    "BaseModels": "registry.bases",
    "ErrorCode": "registry.errors",
    "SwitchboardError": "registry.errors",
    "MANIFEST_FILE": "registry.manifest",
    "Manifest": "registry.manifest",
    "ManifestDraft": "registry.manifest",
    "AdapterRef": "registry.refs",
    "served_name": "registry.refs",
    "validate_name": "registry.refs",
    "PROJECTIONS": "registry.bases",
    "RegistrySettings": "registry.settings",
    "AdapterSummary": "registry.records",
    "VerifyResult": "registry.records",
    "VersionInfo": "registry.records",
    "Registry": "registry.store",
    "open_registry": "registry.store",
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
    from registry.bases import DEFAULT_BASE, PROJECTIONS, BaseModelInfo, BaseModels
    from registry.errors import ErrorCode, SwitchboardError
    from registry.manifest import MANIFEST_FILE, Manifest, ManifestDraft
    from registry.records import AdapterSummary, VerifyResult, VersionInfo
    from registry.refs import AdapterRef, served_name, validate_name
    from registry.settings import RegistrySettings
    from registry.store import Registry, open_registry


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
