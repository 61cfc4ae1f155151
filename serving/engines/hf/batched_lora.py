"""Many LoRA adapters in one forward pass, without a Python loop per request.

Each targeted `nn.Linear` of the base is wrapped once in a `BatchedLoRALinear`. Adapter weights
are loaded once per adapter as (Aᵀ, s·Bᵀ) pairs, ready to multiply. Before a batch runs, its rows
are ordered so that rows for the same adapter are contiguous, and each wrapped layer is given
the batch's plan: one (start, end, Aᵀ, s·Bᵀ) segment per adapter present. A layer then adds
`x[start:end] @ Aᵀ @ s·Bᵀ` to its base output for each segment: work per distinct adapter in
the batch, on contiguous slices (no gathering, no index copies), and nothing for base rows.

PEFT's own mixed-batch path (`adapter_names`) does the same sums but through a generic per-
adapter path with index selection and bookkeeping on every layer call, which costs about a
third of the throughput on CPU with 8 adapters (bench/serve.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from switchboard_lora.registry.adapter_dir import CONFIG_FILE, lora_config_refusal, lora_scaling
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

Segment = tuple[int, int, torch.Tensor, torch.Tensor]  # rows [start, end), Aᵀ, s·Bᵀ
LoRAWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (Aᵀ, s·Bᵀ)

_PREFIX = "base_model.model."


class BatchedLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.plan: list[Segment] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        for start, end, a_t, b_t in self.plan:
            y[start:end] += (x[start:end] @ a_t) @ b_t
        return y


def load_lora(path: Path, dtype: torch.dtype, device: torch.device | str = "cpu") -> LoRAWeights:
    """A PEFT LoRA directory as (Aᵀ, scaling·Bᵀ) per module of the base model, on `device`."""
    from safetensors.torch import load_file

    config: dict[str, Any] = json.loads((path / CONFIG_FILE).read_text())
    refusal = lora_config_refusal(config)  # the registry refused these on publish too
    if refusal is not None:
        raise SwitchboardError(ErrorCode.INVALID_ADAPTER, f"{path.name}: {refusal}")
    scaling = lora_scaling(config)  # one for all modules: per-module patterns are refused
    tensors = load_file(path / "adapter_model.safetensors")
    weights: LoRAWeights = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        weights[module] = (
            a.to(device, dtype).t().contiguous(),
            (b.to(device, dtype) * scaling).t().contiguous(),
        )
    if not weights:
        raise SwitchboardError(ErrorCode.INVALID_ADAPTER, f"{path.name}: no LoRA weights found")
    return weights


class LoRASet:
    """The adapters loaded into one base model, and the per-batch plans of its layers."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: dict[str, BatchedLoRALinear] = {}

    def wrap(self, weights: LoRAWeights) -> None:
        """Wrap every module these weights target (once; later adapters reuse the wrapper)."""
        for name in weights:
            if name in self.layers:
                continue
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            linear = getattr(parent, child, None)
            if not isinstance(linear, nn.Linear):
                raise SwitchboardError(
                    ErrorCode.INVALID_ADAPTER, f"the base has no linear layer {name}"
                )
            layer = BatchedLoRALinear(linear)
            setattr(parent, child, layer)
            self.layers[name] = layer

    def plan(self, segments: list[tuple[int, int, LoRAWeights]]) -> None:
        """Give every wrapped layer its segments for the next batch (rows [start, end))."""
        self.clear()
        for start, end, weights in segments:
            for name, (a_t, b_t) in weights.items():
                self.layers[name].plan.append((start, end, a_t, b_t))

    def clear(self) -> None:
        for layer in self.layers.values():
            layer.plan = []

    @contextlib.contextmanager
    def cleared_after(self) -> Iterator[None]:
        """No plan is left in the layers once decoding stops: the model is the base again."""
        try:
            yield
        finally:
            self.clear()
