"""Engines: the interface every engine implements, and the engines (vLLM, upstream
servers, transformers+PEFT)."""
