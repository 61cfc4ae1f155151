"""Weighted mixes of LoRA adapters, built exactly as one LoRA (docs/architecture.md, Mixtures).

sum_i w_i dW_i with dW_i = s_i B_i A_i (s_i = alpha_i / r_i, or alpha_i / sqrt(r_i) with
rsLoRA) is one LoRA of rank R = sum_i r_i: A = [A_1; ...; A_k] stacked by rows,
B = [w_1 s_1 B_1 ... w_k s_k B_k] side by side, alpha = R (scale 1). A module that some
components do not adapt gets zero rows and columns in their place, so every module has rank
R and the file loads in PEFT and vLLM alike. Averaging A and B separately (PEFT `linear`)
would be another model; this is PEFT's `cat`, computed once.

A mix is registered as a derived version of the adapter `mix-<12 hex>`, named by its
components' content and weights, with the components as lineage: building the same mix again
is a registry lookup. Weights are first quantised to a step (0.05 by default), so that
weights differing in the fourth decimal do not each publish a new mix; and `collect_mixes`
keeps their number bounded, least recently used first out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from switchboard_lora.registry.adapter_dir import CONFIG_FILE, WEIGHTS_FILE, lora_scaling
from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.manifest import Component, ManifestDraft
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.refs import MIX_PREFIX
from switchboard_lora.registry.store import Registry
from switchboard_lora.serving.engines.interface import unservable_by

log = logging.getLogger(__name__)

WEIGHT_DECIMALS = 4
WEIGHT_STEP = 0.05
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True, slots=True)
class Mixture:
    version: VersionInfo
    components: tuple[tuple[VersionInfo, float], ...]
    built: bool  # False: found in the registry (a cache hit)


def mixture_name(components: list[tuple[VersionInfo, float]]) -> str:
    digest = hashlib.sha256()
    for version, weight in sorted(components, key=lambda c: c[0].served_name):
        digest.update(f"{version.served_name}\0{weight:.{WEIGHT_DECIMALS}f}\n".encode())
    return f"mix-{digest.hexdigest()[:12]}"


def quantise(weight: float, step: float) -> float:
    """The nearest multiple of `step`, at least one step (a named component counts)."""
    return round(max(step, round(weight / step) * step), WEIGHT_DECIMALS)


def build_mixture(
    registry: Registry,
    parts: list[tuple[str, float]],
    base: BaseModelInfo,
    step: float = WEIGHT_STEP,
) -> Mixture:
    """The registry version serving Σ wᵢ·ΔWᵢ of the LoRA versions `parts` names (refs),
    weights quantised to `step`."""
    if not parts:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "a mixture needs at least one component")
    components: list[tuple[VersionInfo, float]] = []
    for ref, weight in parts:
        if not math.isfinite(weight) or weight <= 0:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, f"weight of {ref} must be a positive number, got {weight}"
            )
        version = registry.resolve(ref)
        refusal = None if version.method == "lora" else "only LoRA adapters mix"
        problem = unservable_by(version, base.fingerprint, base.id, "mixed", refusal)
        if problem is not None:
            raise problem
        components.append((version, quantise(weight, step)))
    if len({v.served_name for v, _ in components}) != len(components):
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "a component appears twice in the mix")
    name = mixture_name(components)
    try:
        return Mixture(registry.resolve(name), tuple(components), built=False)
    except SwitchboardError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
    with tempfile.TemporaryDirectory(prefix="switchboard-mix-") as tmp:
        out = Path(tmp) / name
        _write_concatenated(registry, components, base, out)
        draft = ManifestDraft(
            description="weighted mix: "
            + ", ".join(f"{v.ref} weight {w:g}" for v, w in components),
            components=[Component(ref=v.ref, weight=w) for v, w in components],
        )
        manifest = registry.publish(out, name, base, draft=draft)
    log.info("built mixture %s of %s", manifest.ref, [v.ref for v, _ in components])
    return Mixture(registry.resolve(manifest.ref), tuple(components), built=True)


def _scale(config: dict[str, Any], module: str, source: str) -> tuple[int, float]:
    """(rank, alpha / rank, or alpha / √rank with rsLoRA) of one module."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise SwitchboardError(
            ErrorCode.INVALID_ADAPTER,
            f"{source}: per-module rank_pattern/alpha_pattern are not supported in mixes",
        )
    return int(config["r"]), lora_scaling(config)


def _write_concatenated(
    registry: Registry,
    components: list[tuple[VersionInfo, float]],
    base: BaseModelInfo,
    out: Path,
) -> None:
    from safetensors.numpy import load_file, save_file

    loaded = []
    for version, weight in components:
        _, directory = registry.checkout(version.ref, base)  # re-hashed: never mix damaged files
        config = json.loads((directory / CONFIG_FILE).read_text())
        tensors = load_file(str(directory / WEIGHTS_FILE))
        loaded.append((version, weight, config, tensors))
    modules = sorted({k[: -len(_A)] for _, _, _, t in loaded for k in t if k.endswith(_A)})
    total_rank = sum(int(config["r"]) for _, _, config, _ in loaded)
    merged: dict[str, np.ndarray] = {}
    for module in modules:
        a_blocks, b_blocks = [], []
        shape = next(
            (t[module + _A].shape[1], t[module + _B].shape[0])
            for _, _, _, t in loaded
            if module + _A in t
        )
        for version, weight, config, tensors in loaded:
            rank, scale = _scale(config, module, version.ref)
            if module + _A in tensors:
                a = tensors[module + _A].astype(np.float32)
                b = tensors[module + _B].astype(np.float32)
            else:  # not adapted by this component: contributes nothing
                a = np.zeros((rank, shape[0]), dtype=np.float32)
                b = np.zeros((shape[1], rank), dtype=np.float32)
            a_blocks.append(a)
            b_blocks.append(b * (weight * scale))
        merged[module + _A] = np.ascontiguousarray(np.concatenate(a_blocks, axis=0))
        merged[module + _B] = np.ascontiguousarray(np.concatenate(b_blocks, axis=1))
    first = loaded[0][2]
    config = {
        **{k: v for k, v in first.items() if k not in ("rank_pattern", "alpha_pattern")},
        "r": total_rank,
        "lora_alpha": total_rank,  # scale 1: the weights and scales are inside B
        "use_rslora": False,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "lora_dropout": 0.0,
    }
    out.mkdir(parents=True)
    save_file(merged, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def collect_mixes(registry: Registry, keep: int, last_used: dict[str, float]) -> list[str]:
    """Purge mixes past the `keep` most recently used (`last_used`: served name -> time of
    use in this process; a mix not used here counts from its creation). Returns the refs
    purged. A mix an alias or an experiment names is kept."""
    mixes = [
        version
        for summary in registry.list_adapters()
        if summary.name.startswith(MIX_PREFIX)
        for version in registry.list_versions(summary.name)
    ]
    if len(mixes) <= keep:
        return []
    mixes.sort(key=lambda v: last_used.get(v.served_name, v.created_at.timestamp()), reverse=True)
    purged = []
    for version in mixes[keep:]:
        try:
            registry.purge(version.ref)
        except SwitchboardError as exc:
            log.info("mix %s kept: %s", version.ref, exc.message)
            continue
        last_used.pop(version.served_name, None)
        purged.append(version.ref)
    if purged:
        log.info("purged least recently used mixes: %s", ", ".join(purged))
    return purged
