"""Where torch runs a model: one reading of a device setting for the encoder and the engine.

`auto` is the first CUDA GPU where torch sees one, else the CPU. A device torch cannot use
is refused here, before any model loads, saying why: torch's own errors come late (at the
first forward pass) or list every backend it was built with.
"""

from __future__ import annotations

from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

DEVICE_HELP = "auto (CUDA where torch sees a GPU, else the CPU), cpu, cuda or cuda:N"


def torch_device(name: str, what: str = "device") -> Any:
    """The `torch.device` that `name` means here, or an error naming `what` and the reason."""
    import torch

    def refuse(reason: str) -> SwitchboardError:
        return SwitchboardError(ErrorCode.INVALID_INPUT, f"{what} {name!r}: {reason}")

    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise refuse(f"not a device: use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise refuse(f"Switchboard runs on cpu or cuda, not {device.type}")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise refuse(f"this machine has no CUDA GPU that torch {torch.__version__} can use")
    count = torch.cuda.device_count()
    index = 0 if device.index is None else device.index
    if index >= count:
        raise refuse(f"this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def default_dtype(device: Any) -> str:
    """bfloat16 on a GPU (half the bytes each decode step reads); float32 on the CPU, where
    bfloat16 kernels are slower on most machines and fp32 keeps tokens exact."""
    return "bfloat16" if device.type == "cuda" else "float32"
