"""Switchboard's trainer: PEFT adapters (LoRA, prefix) on a frozen base, and the demo data.

`trainer.loop` imports torch inside its functions; importing this package stays light.
"""
