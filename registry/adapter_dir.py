"""Check a PEFT adapter directory: loadable by PEFT and both engines, and made for this base.

Publishing proves an adapter loadable before it reaches an engine (where a failure would be a
500, and could take co-batched requests with it), and the engines' load path asks the same
`check_adapter` of versions published before a check existed:
- the safetensors file is what safetensors' own parser accepts (`tensors`);
- the config asks for nothing the engines do not serve (DoRA, biases, fan_in_fan_out,
  per-module patterns…), its scale is sane, and it agrees with every tensor: one rank r >= 1
  for every module, modules its target_modules name, target_modules the base has;
- every tensor is floating point of a dtype the engines take, finite, and small enough that
  the largest entry of the update B·A stays finite in float16, the narrowest serving dtype;
- every tensor's shape is the base's own.
Only the files an adapter is made of are stored; anything else in the directory is left out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.manifest import MANIFEST_FILE, AdapterMethod
from switchboard_lora.registry.tensors import read_tensor_index, tensor_magnitudes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # all a LoRA or prefix adapter is made of
_MODEL_CARD = "README.md"  # PEFT writes one on every save: not stored, not worth a warning
SERVED_DTYPES = ("F16", "BF16", "F32")  # what PEFT and vLLM load LoRA weights as
MAX_MAGNITUDE = 65504.0  # float16's largest finite value
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
    files: tuple[str, ...]  # the files to store, relative to the directory
    left_out: tuple[str, ...] = ()  # other files found there (not stored), but a model card


class AdapterRefused(SwitchboardError):
    """Why an adapter directory cannot be served. `problem` says it of the adapter alone
    (a stored version's caller names the version); the message names the directory."""

    def __init__(self, code: ErrorCode, path: Path, problem: str, joint: str = ": ") -> None:
        super().__init__(code, f"{path}{joint}{problem}")
        self.problem = problem


def _invalid(path: Path, problem: str) -> AdapterRefused:
    return AdapterRefused(ErrorCode.INVALID_ADAPTER, path, problem)


def _incompatible(path: Path, base: BaseModelInfo, problem: str) -> AdapterRefused:
    return AdapterRefused(
        ErrorCode.INCOMPATIBLE_BASE, path, f"does not fit base {base.id}: {problem}", " "
    )


def inspect_adapter(path: Path, base: BaseModelInfo | None) -> AdapterShape:
    """What the adapter in `path` is, or why no engine could serve it (`base` None: every
    check but those against a base's layers)."""
    if not path.is_dir():
        raise _invalid(path, "not a directory")
    names = []
    for entry in sorted(path.iterdir()):
        if entry.name == MANIFEST_FILE:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise _invalid(
                path,
                f"{entry.name} is not a plain file; publish the adapter's own directory "
                "(adapter_config.json and adapter_model.safetensors)",
            )
        names.append(entry.name)
    if CONFIG_FILE not in names:
        raise _invalid(path, f"no {CONFIG_FILE}: not a PEFT adapter directory")
    if WEIGHTS_FILE not in names:
        hint = " (adapter_model.bin found: save with safe_serialization=True)" * (
            "adapter_model.bin" in names
        )
        raise _invalid(path, f"no {WEIGHTS_FILE}{hint}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise _invalid(path, f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise _invalid(path, f"{CONFIG_FILE} must hold a JSON object")
    index = read_tensor_index(path / WEIGHTS_FILE)
    if not index:
        raise _invalid(path, f"{WEIGHTS_FILE} holds no tensors")
    odd = sorted(n for n, t in index.items() if t.dtype not in SERVED_DTYPES)
    if odd:
        raise _invalid(
            path,
            f"tensor {odd[0]} is {index[odd[0]].dtype}: adapter weights must be "
            f"{', '.join(SERVED_DTYPES)}",
        )
    magnitudes = tensor_magnitudes(path / WEIGHTS_FILE)
    bad = sorted(n for n, m in magnitudes.items() if not m < math.inf)
    if bad:
        raise _invalid(path, f"non-finite weights (inf or NaN) in {', '.join(bad[:3])}")
    huge = sorted(n for n, m in magnitudes.items() if m > MAX_MAGNITUDE)
    if huge:
        raise _invalid(
            path,
            f"weights of magnitude {magnitudes[huge[0]]:.3g} in {huge[0]}: beyond "
            f"{MAX_MAGNITUDE:g}, they are not finite in float16",
        )
    shapes = {n: t.shape for n, t in index.items()}
    left_out = tuple(n for n in names if n not in (*ADAPTER_FILES, _MODEL_CARD))
    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        shape = _inspect_lora(path, config, shapes, magnitudes, base)
    elif peft_type == "PREFIX_TUNING":
        shape = _inspect_prefix(path, config, shapes, base)
    else:
        raise _invalid(
            path, f"peft_type {peft_type!r} is not supported (LORA and PREFIX_TUNING are)"
        )
    return replace(shape, left_out=left_out)


def adapter_problems(path: Path, base: BaseModelInfo | None) -> list[str]:
    """Why the adapter in `path` cannot be served ([]: it can), for versions already stored."""
    try:
        inspect_adapter(path, base)
    except SwitchboardError as exc:  # said of the adapter alone where it can be
        return [exc.problem if isinstance(exc, AdapterRefused) else exc.message]
    return []


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


def _positive_int(path: Path, config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(path, f"{CONFIG_FILE}: {key} must be a positive integer, got {value!r}")
    return value


def _inspect_lora(
    path: Path,
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    magnitudes: dict[str, float],
    base: BaseModelInfo | None,
) -> AdapterShape:
    refusal = lora_config_refusal(config)
    if refusal is not None:
        raise _invalid(path, f"{CONFIG_FILE}: {refusal}")
    rank, alpha = config["r"], config["lora_alpha"]
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
    targets = _targets(path, config, base)
    bound = lora_scaling(config) * rank  # times max|A| max|B|: the update's largest entry
    for module, pair in sorted(modules.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise _invalid(path, f"{module} has lora_A or lora_B but not both")
        a, b = pair["lora_A"], pair["lora_B"]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise _invalid(path, f"{module}: lora_A {a} and lora_B {b} do not form a LoRA pair")
        if a[0] != rank:
            raise _invalid(
                path, f"{module} has rank {a[0]}, its config's r is {rank} (one rank for all)"
            )
        if not targets(module):
            raise _invalid(
                path,
                f"{module} is not among target_modules {config.get('target_modules')!r}: "
                "PEFT would not load it",
            )
        a_max, b_max = (magnitudes[f"{_PEFT_PREFIX}{module}.{m}.weight"] for m in pair)
        if bound * a_max * b_max > MAX_MAGNITUDE:
            raise _invalid(
                path,
                f"{module}: its update B·A reaches {bound * a_max * b_max:.3g}, beyond "
                f"{MAX_MAGNITUDE:g} (not finite in float16)",
            )
        if base is None:
            continue
        target = base.tensor_shapes.get(f"{module}.weight")
        if target is None:
            raise _incompatible(path, base, f"the base has no module {module}")
        if (b[0], a[1]) != target:
            raise _incompatible(
                path,
                base,
                f"{module} maps {a[1]} -> {b[0]} features, the base's weight is {target}",
            )
    names = sorted({m.rsplit(".", 1)[-1] for m in modules})
    return AdapterShape("lora", rank, float(alpha), tuple(names), None, ADAPTER_FILES)


def _targets(
    path: Path, config: dict[str, Any], base: BaseModelInfo | None
) -> Callable[[str], bool]:
    """Whether PEFT, given this config, puts a LoRA on a module (by its full name); a
    target_modules entry that names no layer of the base is refused, as PEFT refuses it."""
    wanted = config.get("target_modules")
    if wanted is None or wanted == "all-linear":
        return lambda module: True
    if isinstance(wanted, str):
        try:
            pattern = re.compile(wanted)
        except re.error as exc:
            raise _invalid(path, f"{CONFIG_FILE}: target_modules is not a regex: {exc}") from exc
        return lambda module: pattern.fullmatch(module) is not None
    if not isinstance(wanted, list) or not all(isinstance(t, str) and t for t in wanted):
        raise _invalid(path, f"{CONFIG_FILE}: target_modules must be a list of module names")

    def targeted(module: str, among: list[str] = wanted) -> bool:
        return any(module == t or module.endswith(f".{t}") for t in among)

    if base is not None:
        layers = [n.removesuffix(".weight") for n, s in base.tensor_shapes.items() if len(s) == 2]
        missing = [t for t in wanted if not any(targeted(layer, [t]) for layer in layers)]
        if missing:
            raise _incompatible(path, base, f"target_modules {missing} name no layer of the base")
    return targeted


def _inspect_prefix(
    path: Path,
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    base: BaseModelInfo | None,
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
    if base is None:
        return AdapterShape("prefix", None, None, (), tokens, ADAPTER_FILES)
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
    return AdapterShape("prefix", None, None, (), tokens, ADAPTER_FILES)
