"""The transformers+PEFT engine: continuous batching, the decode loop and batched LoRA."""
