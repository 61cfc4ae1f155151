"""Switchboard's server: an OpenAI-compatible API over one engine with many adapters.

`app` (routes) over `service` (from `model` to an adapter the engine can serve: routing,
refs, mixtures, A/B arms) over an `engine` (`vllm_engine`: vLLM multi-LoRA; `hf_engine`:
transformers with `batched_lora` and `batcher`). `build` assembles them from `settings`.
Imports `registry` and `router`.
"""
