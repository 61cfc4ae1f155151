"""Switchboard's trainer: PEFT adapters (LoRA, prefix) on a frozen base, one domain at a time.

`config` (what a run is asked for), `data` (the JSONL formats), `encoding` (tokens, masked
labels, batches), `losses`, `peft_setup` (the adapter and the frozen-base checks), `loop`
(`train_adapter`), `synthetic` (untrained adapters for tests and benchmarks). Imports
`registry` only; torch loads inside the functions that need it.
"""
