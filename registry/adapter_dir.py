"""Check a PEFT adapter directory against a base model, without loading any weights.

Reads `adapter_config.json` and the safetensors header, and checks every tensor's shape
against the base's own tensor shapes: an adapter made for another base is refused before it
reaches an engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.bases import BaseModelInfo
from registry.errors import ErrorCode, SwitchboardError
from registry.manifest import MANIFEST_FILE, Method
from registry.tensors import read_tensor_index

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True, slots=True)
class AdapterShape:
    method: Method
    rank: int | None
    alpha: float | None
    target_modules: tuple[str, ...]
    num_virtual_tokens: int | None
    files: tuple[str, ...]  # every file to store, relative to the directory


def _invalid(path: Path, problem: str) -> SwitchboardError:
    return SwitchboardError(ErrorCode.INVALID_ADAPTER, f"{path}: {problem}")


def _incompatible(path: Path, base: BaseModelInfo, problem: str) -> SwitchboardError:
    return SwitchboardError(
        ErrorCode.INCOMPATIBLE_BASE, f"{path} does not fit base {base.id}: {problem}"
    )


def inspect_adapter(path: Path, base: BaseModelInfo) -> AdapterShape:
    if not path.is_dir():
        raise _invalid(path, "not a directory")
    files = []
    for entry in sorted(path.iterdir()):
        if entry.name == MANIFEST_FILE:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise _invalid(
                path,
                f"{entry.name} is not a plain file; publish the adapter's own directory "
                "(adapter_config.json and adapter_model.safetensors)",
            )
        files.append(entry.name)
    if CONFIG_FILE not in files:
        raise _invalid(path, f"no {CONFIG_FILE}: not a PEFT adapter directory")
    if WEIGHTS_FILE not in files:
        hint = " (adapter_model.bin found: save with safe_serialization=True)" * (
            "adapter_model.bin" in files
        )
        raise _invalid(path, f"no {WEIGHTS_FILE}{hint}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise _invalid(path, f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise _invalid(path, f"{CONFIG_FILE} must hold a JSON object")
    shapes = {n: t.shape for n, t in read_tensor_index(path / WEIGHTS_FILE).items()}
    if not shapes:
        raise _invalid(path, f"{WEIGHTS_FILE} holds no tensors")
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return _inspect_lora(path, config, shapes, base, tuple(files))
    if peft_type == "PREFIX_TUNING":
        return _inspect_prefix(path, config, shapes, base, tuple(files))
    raise _invalid(path, f"peft_type {peft_type!r} is not supported (LORA and PREFIX_TUNING are)")


def _positive_int(path: Path, config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(path, f"{CONFIG_FILE}: {key} must be a positive integer, got {value!r}")
    return value


def _inspect_lora(
    path: Path,
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    base: BaseModelInfo,
    files: tuple[str, ...],
) -> AdapterShape:
    _positive_int(path, config, "r")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise _invalid(path, f"{CONFIG_FILE}: lora_alpha must be a positive number")
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(_PEFT_PREFIX):
            raise _invalid(
                path,
                f"tensor {key!r} is not a LoRA A/B matrix (modules_to_save, DoRA, LoRA bias "
                "and embedding LoRA are not supported)",
            )
        module = key[len(_PEFT_PREFIX) : -len(suffix)]
        modules.setdefault(module, {})[suffix[1:7]] = shape
    rank = 0
    base_shapes = base.tensor_shapes
    for module, pair in sorted(modules.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise _invalid(path, f"{module} has lora_A or lora_B but not both")
        a, b = pair["lora_A"], pair["lora_B"]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise _invalid(path, f"{module}: lora_A {a} and lora_B {b} do not form a LoRA pair")
        target = base_shapes.get(f"{module}.weight")
        if target is None:
            raise _incompatible(path, base, f"the base has no module {module}")
        if (b[0], a[1]) != target:
            raise _incompatible(
                path,
                base,
                f"{module} maps {a[1]} -> {b[0]} features, the base's weight is {target}",
            )
        rank = max(rank, a[0])
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return AdapterShape("lora", rank, float(alpha), tuple(targets), None, files)


def _inspect_prefix(
    path: Path,
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    base: BaseModelInfo,
    files: tuple[str, ...],
) -> AdapterShape:
    tokens = _positive_int(path, config, "num_virtual_tokens")
    layers = _positive_int(path, config, "num_layers")
    token_dim = _positive_int(path, config, "token_dim")
    if set(shapes) != {"prompt_embeddings"}:
        raise _invalid(path, f"a prefix adapter holds prompt_embeddings only, got {sorted(shapes)}")
    expected = (tokens, layers * 2 * token_dim)
    if shapes["prompt_embeddings"] != expected:
        raise _invalid(
            path, f"prompt_embeddings is {shapes['prompt_embeddings']}, config implies {expected}"
        )
    cfg = base.config
    base_layers = cfg.get("num_hidden_layers")
    if layers != base_layers:
        raise _incompatible(path, base, f"{layers} layers, the base has {base_layers}")
    hidden = cfg.get("hidden_size")
    heads = cfg.get("num_attention_heads") or 1
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden else None)
    # PEFT sizes the prefix by the key/value width: hidden size, or kv heads * head dim (GQA).
    allowed = {int(w) for w in (hidden, kv_heads * head_dim if head_dim else None) if w}
    if token_dim not in allowed:
        raise _incompatible(
            path, base, f"token_dim {token_dim}, the base's key/value width is {sorted(allowed)}"
        )
    return AdapterShape("prefix", None, None, (), tokens, files)
