"""Building a server's parts from its settings: the registry, the engine the settings name,
and a router over the adapters that engine can serve for the served base."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from registry.errors import ErrorCode, SwitchboardError
from registry.records import VersionInfo
from serving.decision_log import DecisionRecorder
from serving.engine import Engine
from serving.service import Service, unservable
from serving.settings import EngineSettings, ServerSettings

log = logging.getLogger(__name__)


def build_service(settings: ServerSettings) -> Service:
    """Registry, router (over the adapters of the served base that the engine can serve)
    and the engine that `settings.engine` names."""
    from registry.bases import BaseModels
    from registry.store import open_registry
    from router.router import RegistryRoutes, build_router

    registry = open_registry(settings)
    base = BaseModels(settings.bases_dir).get(settings.base)
    engine = build_engine(settings, base.path)

    def servable(version: VersionInfo) -> bool:
        return unservable(version, base, engine) is None

    routes = RegistryRoutes(registry, accept=servable)
    router = build_router(settings, routes, settings.home_dir)
    return Service(
        registry,
        router,
        engine,
        base,
        mix_step=settings.mix_weight_step,
        max_mixes=settings.max_mixes,
        record=None
        if settings.route_log == "off"
        else DecisionRecorder(registry.decisions, settings.route_log, settings.route_log_sample),
    )


def build_engine(settings: EngineSettings, base_dir: Path) -> Engine:
    """Upstreams make a gateway; else `auto` takes vLLM where it is installed and supports
    the base, else transformers."""
    from serving.hf_engine import HFEngine
    from serving.vllm_engine import VLLMEngine, VLLMOptions, vllm_supports

    if settings.upstreams:
        return _gateway(settings, base_dir)
    choice = settings.engine
    if choice in ("auto", "vllm"):
        reason = vllm_supports(base_dir)
        if reason is None:
            choice = "vllm"
        elif choice == "vllm":
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"engine vllm: {reason}")
        else:
            log.info("engine auto: transformers+PEFT (%s)", reason)
            choice = "hf"
    if choice == "vllm":
        options = VLLMOptions(
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
        return VLLMEngine(base_dir, options)
    return HFEngine(
        base_dir,
        max_adapters=settings.max_loras,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
    )


def _gateway(settings: EngineSettings, base_dir: Path) -> Engine:
    from serving.tokens import Tokens
    from serving.upstream import UpstreamEngine, UpstreamPool

    config = json.loads((base_dir / "config.json").read_text())
    context = int(config.get("max_position_embeddings", 2048))
    pool = UpstreamPool(
        settings.upstreams,
        max_in_flight=settings.upstream_max_in_flight,
        policy=settings.upstream_policy,
    )
    log.info("gateway to %s (%s)", ", ".join(settings.upstreams), settings.upstream_policy)
    return UpstreamEngine(
        Tokens(base_dir),
        pool,
        max_model_len=min(settings.max_model_len or context, context),
        health_s=settings.upstream_health_s,
    )
