"""Check a PEFT adapter directory: loadable by the engines, and made for this base.

Publishing proves an adapter loadable before it reaches an engine (where a failure would be a
500, and could take co-batched requests with it): the safetensors header is bounded against
the file (`tensors`), the config asks for nothing the engines do not serve (DoRA, biases,
fan_in_fan_out, per-module patterns…), the scale is sane, every weight is finite; and every
tensor's shape is checked against the base's own. `adapter_problems` runs the checks that need
no base, for `registry verify` over versions published before them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.manifest import MANIFEST_FILE, AdapterMethod
from switchboard_lora.registry.tensors import nonfinite_tensors, read_tensor_index

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
MAX_LORA_SCALE = 1024.0  # alpha / r (or / √r): typical adapters use 0.5 to 64
# LoRA config entries neither engine serves, with the value that asks for nothing.
_UNSERVED: dict[str, tuple[str, Any]] = {
    "use_dora": ("DoRA", False),
    "bias": ("LoRA biases", "none"),
    "fan_in_fan_out": ("fan_in_fan_out (Conv1D layers)", False),
    "modules_to_save": ("modules_to_save", None),
    "rank_pattern": ("per-module rank_pattern", {}),
    "alpha_pattern": ("per-module alpha_pattern", {}),
    "layers_to_transform": ("layers_to_transform", None),
    "layer_replication": ("layer_replication", None),
    "trainable_token_indices": ("trainable_token_indices", None),
}


@dataclass(frozen=True, slots=True)
class AdapterShape:
    method: AdapterMethod
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
    bad = nonfinite_tensors(path / WEIGHTS_FILE)
    if bad:
        raise _invalid(path, f"non-finite weights (inf or NaN) in {', '.join(bad[:3])}")
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return _inspect_lora(path, config, shapes, base, tuple(files))
    if peft_type == "PREFIX_TUNING":
        return _inspect_prefix(path, config, shapes, base, tuple(files))
    raise _invalid(path, f"peft_type {peft_type!r} is not supported (LORA and PREFIX_TUNING are)")


def lora_config_refusal(config: dict[str, Any]) -> str | None:
    """Why the engines cannot serve a LoRA with this config (None: they can)."""
    for key, (what, neutral) in _UNSERVED.items():
        value = config.get(key, neutral)
        if value != neutral and not (neutral is None and value in ([], {}, False)):
            return f"{what} cannot be served (plain LoRA only): {key} = {value!r}"
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        return f"r must be a positive integer, got {rank!r}"
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
        return f"lora_alpha must be a positive number, got {alpha!r}"
    scale = lora_scaling(config)
    if scale > MAX_LORA_SCALE:
        return f"its scale lora_alpha/r = {scale:g} is above {MAX_LORA_SCALE:g}"
    return None


def lora_scaling(config: dict[str, Any]) -> float:
    """What a LoRA's update B·A is multiplied by: lora_alpha / r, or / √r with rsLoRA. The
    one place this rule lives: checks, the transformers engine and mixtures all ask it."""
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def adapter_problems(path: Path) -> list[str]:
    """What makes this adapter directory unloadable, without a base to compare with."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        index = read_tensor_index(path / WEIGHTS_FILE)
    except (OSError, ValueError, SwitchboardError) as exc:
        return [str(exc.message if isinstance(exc, SwitchboardError) else exc)]
    problems = []
    if not isinstance(config, dict):
        problems.append(f"{CONFIG_FILE} must hold a JSON object")
    elif config.get("peft_type") == "LORA":
        refusal = lora_config_refusal(config)
        if refusal is not None:
            problems.append(refusal)
    if not index:
        problems.append(f"{WEIGHTS_FILE} holds no tensors")
    bad = nonfinite_tensors(path / WEIGHTS_FILE)
    if bad:
        problems.append(
            f"non-finite weights (inf or NaN) in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        )
    return problems


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
    refusal = lora_config_refusal(config)
    if refusal is not None:
        raise _invalid(path, f"{CONFIG_FILE}: {refusal}")
    alpha = config["lora_alpha"]
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
