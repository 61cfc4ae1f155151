"""Building a server's parts from its settings: the registry, the engine the settings name,
and a router over the adapters that engine can serve for the served base."""

from __future__ import annotations

import logging
from pathlib import Path

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.serving.decision_recorder import DecisionRecorder
from switchboard_lora.serving.engines.interface import Engine, EngineChoice, served_context
from switchboard_lora.serving.service import Service, unservable
from switchboard_lora.serving.settings import EngineSettings, ServerSettings

log = logging.getLogger(__name__)


def build_service(settings: ServerSettings) -> Service:
    """Registry, router (over the adapters of the served base that the engine can serve)
    and the engine that `settings.engine` names."""
    from switchboard_lora.registry.bases import BaseModels
    from switchboard_lora.registry.store import open_registry
    from switchboard_lora.router.router import RegistryRoutes, build_router

    registry = open_registry(settings)
    base = BaseModels(settings.bases_dir).get(settings.base)
    engine = build_engine(settings, base.path)

    def servable(version: VersionInfo) -> bool:
        return unservable(version, base, engine) is None

    routes = RegistryRoutes(registry, accept=servable)
    # The encoder beside the engine (unless its own device is set); a gateway's is local.
    router = build_router(settings, routes, settings.home_dir, device=settings.device)
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


# Why `engine auto` takes the transformers engine on the CPU: `python -m bench.serve --part
# throughput --engine both` on two cores (32 prompts x 64 tokens, 8 rank-16 adapters, fp32).
CPU_REASON = (
    "on the CPU the transformers engine batches mixed adapters at 0.89 of base throughput, "
    "vLLM-CPU at 0.34 (bench.serve); --engine vllm forces vLLM"
)


def choose_engine(settings: EngineSettings, base_dir: Path) -> EngineChoice:
    """Which engine serves, where, in which dtype, and why; nothing loads. `auto`: vLLM on a
    GPU where it is installed and supports the base, the transformers engine on the CPU."""
    from switchboard_lora.router.devices import default_dtype, torch_device
    from switchboard_lora.serving.engines.vllm_engine import vllm_supports

    device = torch_device(settings.device, "device")  # an unusable one is refused here
    dtype = settings.dtype or default_dtype(device)

    def chosen(engine: str, reason: str) -> EngineChoice:
        return EngineChoice(engine, str(device), dtype, reason)

    if settings.engine == "hf":
        return chosen("hf", "engine hf (SWITCHBOARD_ENGINE)")
    if settings.engine == "vllm":
        reason = vllm_supports(base_dir)
        if reason is not None:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, f"engine vllm: {reason}")
        return chosen("vllm", "engine vllm (SWITCHBOARD_ENGINE)")
    if device.type == "cpu":
        return chosen("hf", f"engine auto: {CPU_REASON}")
    reason = vllm_supports(base_dir)
    if reason is None:
        return chosen("vllm", f"engine auto: vLLM on {device} (multi-LoRA kernels on the GPU)")
    return chosen("hf", f"engine auto: transformers on {device} ({reason})")


def build_engine(settings: EngineSettings, base_dir: Path) -> Engine:
    """Upstreams make a gateway; else the engine `choose_engine` picks, told its choice."""
    if settings.upstreams:
        return _gateway(settings, base_dir)
    choice = choose_engine(settings, base_dir)
    log.info("%s on %s in %s: %s", choice.engine, choice.device, choice.dtype, choice.reason)
    engine: Engine
    if choice.engine == "vllm":
        from switchboard_lora.serving.engines.vllm_engine import VLLMEngine, VLLMOptions

        options = VLLMOptions(
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,
            dtype=choice.dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
        engine = VLLMEngine(base_dir, options)
    else:
        from switchboard_lora.serving.engines.hf.engine import HFEngine

        engine = HFEngine(
            base_dir,
            max_adapters=settings.max_loras,
            device=choice.device,
            dtype=choice.dtype,
            max_model_len=settings.max_model_len,
            max_batch=settings.max_batch,
        )
    engine.choice = choice
    return engine


def _gateway(settings: EngineSettings, base_dir: Path) -> Engine:
    from switchboard_lora.serving.engines.tokens import Tokens
    from switchboard_lora.serving.engines.upstream import Timeouts, UpstreamEngine, UpstreamPool

    pool = UpstreamPool(
        settings.upstreams,
        max_in_flight=settings.upstream_max_in_flight,
        policy=settings.upstream_policy,
    )
    log.info("gateway to %s (%s)", ", ".join(settings.upstreams), settings.upstream_policy)
    engine = UpstreamEngine(
        Tokens(base_dir),
        pool,
        max_model_len=served_context(base_dir, settings.max_model_len),
        health_s=settings.upstream_health_s,
        timeouts=Timeouts(
            settings.upstream_connect_timeout_s,
            settings.upstream_first_token_timeout_s,
            settings.upstream_token_timeout_s,
        ),
    )
    engine.choice = EngineChoice(
        "upstream", "upstreams", "theirs", f"gateway to {len(settings.upstreams)} upstream(s)"
    )
    return engine
