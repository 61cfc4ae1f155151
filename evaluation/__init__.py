"""Evaluation harnesses above the package (never installed): research runs that use
Switchboard's layers to measure something, driven by a benchmark command."""
