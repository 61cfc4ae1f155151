"""The `vllm.general_plugins` entry point (`switchboard`): registers Switchboard's LoRA
resolver (`serving.engines.vllm_resolver`) in a `vllm serve` process, with the registry the
`SWITCHBOARD_*` environment describes. vLLM calls it in each of its processes; the
environment is read, and the registry opened, on the first adapter vLLM asks for."""

from __future__ import annotations


def register() -> None:
    from vllm.lora.resolver import LoRAResolverRegistry

    from switchboard_lora.serving.engines.vllm_resolver import SwitchboardResolver
    from switchboard_lora.settings import from_environment

    LoRAResolverRegistry.register_resolver("switchboard", SwitchboardResolver(from_environment))
