"""Switchboard's LoRA resolver for `vllm serve`: every registry adapter, by served name.

vLLM asks its LoRA resolvers for an adapter name it has not loaded yet (with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`; the plugin, `switchboard_lora.vllm_plugin`, is the
`switchboard` entry of the `vllm.general_plugins` group: `VLLM_PLUGINS=switchboard`). This
resolver answers for Switchboard served names (`legal-v4-<digest>`, a mixture's derived
version too): it finds the version in the registry the `SWITCHBOARD_*` settings describe (SQL
database and blob store), checks that it was trained on the base this vLLM serves (weights
fingerprint), checks it out verified into this machine's cache, and returns the
`LoRARequest`. So a plain `vllm serve BASE --enable-lora` serves every registry adapter with
no restart and no load call.

A name of another shape is not Switchboard's: None, so other resolvers still get it. A
Switchboard name that cannot be served (unknown or deleted version, another base, a prefix
adapter, files that fail verification) is logged with the reason and also answered None:
vLLM then answers the request with a 404.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver

from switchboard_lora.registry import (
    AdapterRef,
    BaseModelInfo,
    BaseModels,
    Registry,
    RegistrySettings,
    SwitchboardError,
    open_registry,
)
from switchboard_lora.registry.refs import SERVED_NAME
from switchboard_lora.serving.engines.interface import unservable_by
from switchboard_lora.serving.engines.vllm_engine import lora_id

log = logging.getLogger(__name__)


class SwitchboardResolver(LoRAResolver):
    def __init__(self, settings: Callable[[], RegistrySettings]) -> None:
        self._settings = settings  # called on first use: loading the plugin opens nothing
        self._registry: Registry | None = None
        self._bases: BaseModels | None = None
        self._served_bases: dict[str, BaseModelInfo] = {}
        self._lock = threading.Lock()

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        if not SERVED_NAME.fullmatch(lora_name):
            return None  # not ours
        path = await asyncio.to_thread(self._checkout, base_model_name, lora_name)
        if path is None:
            return None
        log.info("switchboard: serving %s from %s", lora_name, path)
        return LoRARequest(lora_name=lora_name, lora_int_id=lora_id(lora_name), lora_path=str(path))

    def _checkout(self, base_model_name: str, served_name: str) -> Path | None:
        """The verified local directory of a served name, or None (logged) if it cannot be
        served here."""
        try:
            ref = AdapterRef.parse(served_name)
            with self._lock:
                registry = self._open()
                info = registry.resolve(ref)  # unknown or deleted: its reason, logged below
                refusal = None if info.method == "lora" else "vLLM serves LoRA only"
                base = self._base(base_model_name)
                problem = unservable_by(info, base.fingerprint, base_model_name, "served", refusal)
                if problem is not None:
                    raise problem
                return registry.checkout(ref, base)[1]
        except SwitchboardError as exc:
            log.warning("switchboard: cannot serve %s: %s", served_name, exc)
        except Exception:
            log.exception("switchboard: resolving %s failed", served_name)
        return None

    def _open(self) -> Registry:
        if self._registry is None:
            settings = self._settings()
            self._registry = open_registry(settings)
            self._bases = BaseModels(settings.bases_dir)
        return self._registry

    def _base(self, base_model_name: str) -> BaseModelInfo:
        """The served base (a model directory, or a cached base's name)."""
        if base_model_name not in self._served_bases:
            assert self._bases is not None
            self._served_bases[base_model_name] = self._bases.get(base_model_name)
        return self._served_bases[base_model_name]
