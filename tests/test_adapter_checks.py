# ruff: noqa: E501  (the hostile adapters read best as one row per case)
"""Issue 34, items 1-10: publish accepts only adapters PEFT and both engines can load, `registry
verify` finds the ones stored before a check existed, and serving them is a 422 naming the
version, never a 500. Each hostile adapter is the fixture's real PEFT adapter, edited."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from conftest import refused
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from serving_world import World, chat, make_lora, still_serves

import switchboard_lora.registry.store as store
from switchboard_lora.registry import BaseModelInfo, Registry
from switchboard_lora.registry.adapter_dir import ADAPTER_FILES, AdapterShape
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.manifest import MANIFEST_FILE

CONFIG, WEIGHTS = ADAPTER_FILES
Tensors = dict[str, np.ndarray]


def _raw(path: Path, tensors: list[tuple[str, str, list[int], bytes]], **odd: Any) -> None:
    """Write a safetensors file by hand, with the oddities a careless writer leaves: a gap
    between tensors, bytes after the last, a metadata table of other types."""
    header: dict[str, Any] = {}
    if "metadata" in odd:
        header["__metadata__"] = odd["metadata"]
    body = b""
    for i, (name, dtype, shape, data) in enumerate(tensors):
        if i == 1:
            body += b"\0" * odd.get("gap", 0)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}  # fmt: skip
        body += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body + b"\0" * odd.get("trailing", 0))


def _entries(tensors: Tensors, dtype: str = "F32") -> list[tuple[str, str, list[int], bytes]]:
    return [(n, dtype, list(t.shape), t.astype(np.float32).tobytes()) for n, t in sorted(tensors.items())]  # fmt: skip


def _resave(tensors: Tensors, path: Path, edit: Callable[[str, np.ndarray], np.ndarray]) -> None:
    save_file({n: np.ascontiguousarray(edit(n, t)) for n, t in tensors.items()}, str(path))


def _f8_nan(path: Path, tensors: Tensors) -> None:
    entries = _entries(tensors)
    name, _, shape, _ = entries[0]
    entries[0] = (name, "F8_E4M3", shape, b"\x7f" + b"\x38" * (int(np.prod(shape)) - 1))
    _raw(path, entries)


def _int32(path: Path, tensors: Tensors) -> None:
    _resave(tensors, path, lambda _, t: (t * 1000).astype(np.int32))


def _rank(rank_of: Callable[[str], int]) -> Callable[[Path, Tensors], None]:
    def edit(path: Path, tensors: Tensors) -> None:
        def resized(name: str, t: np.ndarray) -> np.ndarray:
            r = rank_of(name)
            return np.ones((r, t.shape[1]), t.dtype) if ".lora_A." in name else np.ones((t.shape[0], r), t.dtype)  # fmt: skip

        _resave(tensors, path, resized)

    return edit


# (what, edit of the weights or None, config update, message, safetensors itself refuses it)
HOSTILE: list[tuple[str, Callable[[Path, Tensors], None] | None, dict[str, Any], str, bool]] = [
    ("1: F8 with a NaN byte", _f8_nan, {}, "F8_E4M3: adapter weights must be F16, BF16, F32", False),
    ("1: NaN in F32", lambda p, t: _resave(t, p, lambda n, x: x * np.nan if "lora_A" in n else x), {}, "non-finite", False),
    ("2: lora_B 3e38", lambda p, t: _resave(t, p, lambda n, x: np.full_like(x, 3e38) if "lora_B" in n else x), {}, "not finite in float16", False),
    ("2: an update past float16", lambda p, t: _resave(t, p, lambda n, x: np.full_like(x, 300.0)), {}, "its update B·A reaches", False),
    ("3: bytes after the data", lambda p, t: _raw(p, _entries(t), trailing=64), {}, "bytes after the last tensor", True),
    ("4: a gap between tensors", lambda p, t: _raw(p, _entries(t), gap=8), {}, "a gap or an overlap", True),
    ("5: metadata of integers", lambda p, t: _raw(p, _entries(t), metadata={"format": 5}), {}, "__metadata__ must map strings to strings", True),
    ("6: rank 0", _rank(lambda _: 0), {"r": 8}, "has rank 0, its config's r is 8", False),
    ("7: r far above the tensors", None, {"r": 100000, "lora_alpha": 100000}, "has rank 4, its config's r is 100000", False),
    ("8: target modules that do not exist", None, {"target_modules": ["nonexistent_proj"]}, "nonexistent_proj", False),
    ("8: tensors of modules not targeted", None, {"target_modules": ["q_proj"]}, "is not among target_modules ['q_proj']", False),
    ("9: one module at another rank", _rank(lambda n: 16 if "q_proj" in n else 8), {"r": 8}, "has rank 16, its config's r is 8", False),
    ("10: int32 weights", _int32, {}, "is I32: adapter weights must be", False),
]  # fmt: skip


def _hostile(lora_dir: Path, out: Path, case: tuple[Any, ...]) -> Path:
    _, edit, config_update, _, _ = case
    shutil.copytree(lora_dir, out)
    if edit is not None:
        edit(out / WEIGHTS, load_file(str(lora_dir / WEIGHTS)))
    config = json.loads((out / CONFIG).read_text()) | config_update
    (out / CONFIG).write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_publish_refuses_adapters_no_engine_can_load(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
    case: tuple[Any, ...],
) -> None:
    hostile = _hostile(lora_dir, tmp_path / "hostile", case)
    with pytest.raises(SwitchboardError) as failed:
        registry.publish(hostile, "legal", tiny_base)
    assert failed.value.code in (ErrorCode.INVALID_ADAPTER, ErrorCode.INCOMPATIBLE_BASE)
    assert case[3] in failed.value.message
    assert registry.list_adapters() == []
    if case[4]:  # a file format problem: the engines' own parser agrees
        with pytest.raises(SafetensorError), safe_open(str(hostile / WEIGHTS), "numpy") as f:
            list(f.keys())


def test_a_target_the_base_does_not_have_is_named_beside_real_ones(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path
) -> None:
    config = json.loads((lora_dir / CONFIG).read_text())
    case = (
        "",
        None,
        {"target_modules": [*config["target_modules"], "nonexistent_proj"]},
        "",
        False,
    )
    with refused(ErrorCode.INCOMPATIBLE_BASE, "target_modules ['nonexistent_proj'] name no layer"):
        registry.publish(_hostile(lora_dir, tmp_path / "extra", case), "legal", tiny_base)


def test_sound_adapters_in_every_served_dtype_publish(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path
) -> None:
    """The checks refuse what they should and nothing else: float16 and bfloat16 copies,
    and a regex target_modules, publish."""
    import torch
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    for dtype in (torch.float16, torch.bfloat16):
        copy = shutil.copytree(lora_dir, tmp_path / str(dtype))
        tensors = {n: t.to(dtype) for n, t in load_torch(str(lora_dir / WEIGHTS)).items()}
        save_torch(tensors, str(copy / WEIGHTS), metadata={"format": "pt"})
        assert registry.publish(copy, f"legal-{str(dtype)[6:]}", tiny_base).rank == 4
    regex = ("", None, {"target_modules": r".*\.(q|k|v|o|gate|up|down)_proj"}, "", False)
    registry.publish(_hostile(lora_dir, tmp_path / "regex", regex), "regex", tiny_base)


def test_only_the_adapters_own_files_are_stored_and_exported(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Item 10: a pickle beside the safetensors was stored and shipped by export."""
    copy = shutil.copytree(lora_dir, tmp_path / "with-pickle")
    (copy / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle of 1
    (copy / "training_args.pt").write_bytes(b"\x80\x04K\x02.")
    manifest = registry.publish(copy, "legal", tiny_base)
    assert set(manifest.files) == set(ADAPTER_FILES)
    assert "left out adapter_model.bin, training_args.pt" in caplog.text
    exported = registry.export("legal", tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.joinpath("exported").iterdir()) == sorted(
        [*ADAPTER_FILES, MANIFEST_FILE]
    )
    assert exported.ref == "legal:1"
    assert registry.publish(tmp_path / "exported", "again", tiny_base).content_digest == (
        manifest.content_digest
    )


def _publish_unchecked(registry: Registry, source: Path, name: str, base: BaseModelInfo) -> str:
    """Publish as a registry from before these checks would have: shape from the config."""
    config = json.loads((source / CONFIG).read_text())
    shape = AdapterShape("lora", config["r"], float(config["lora_alpha"]), ("q_proj",), None, ADAPTER_FILES)  # fmt: skip
    with pytest.MonkeyPatch.context() as before_the_checks:
        before_the_checks.setattr(store, "inspect_adapter", lambda *_: shape)
        return registry.publish(source, name, base).ref


def test_verify_and_checkout_refuse_versions_stored_before_the_checks(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path
) -> None:
    registry.publish(lora_dir, "good", tiny_base)
    refs = {
        _publish_unchecked(registry, _hostile(lora_dir, tmp_path / str(i), case), f"old{i}", tiny_base): case
        for i, case in enumerate(HOSTILE)
    }  # fmt: skip
    results = {r.ref: r for r in registry.verify(bases=[tiny_base])}
    assert results["good:1"].ok
    for ref, case in refs.items():
        assert not results[ref].ok and case[3] in results[ref].problems[0], (ref, results[ref])
        with refused(ErrorCode.UNLOADABLE, f"{ref} cannot be served: "):
            registry.checkout(ref, tiny_base)
        with refused(ErrorCode.UNLOADABLE, case[3]):
            registry.checkout(ref)  # the checks that need no base, too
    # Without its base on this machine, verify says what it could not check.
    [alone] = registry.verify("good")
    assert alone.ok and "shapes against it were not checked" in alone.notes[0]


HTTP_CASES = [c for c in HOSTILE if c[0][:2] in ("1:", "3:", "5:", "6:", "7:")]


def test_serving_a_version_stored_before_the_checks_is_a_422_naming_it(
    client: openai.OpenAI, world: World, engine: str, tmp_path: Path
) -> None:
    """Items 1, 3, 5, 6, 7 were a 200 with nothing in it, a 500, or a process killed for
    memory. `client` serves the real base on each engine."""
    before = chat(client, "math", "hi")
    good = make_lora(world.base, tmp_path / "good", seed=31)
    for i, case in enumerate(HTTP_CASES):
        ref = _publish_unchecked(
            world.registry, _hostile(good, tmp_path / str(i), case), f"old{i}-{engine}", world.base
        )
        refusal: tuple[type[openai.APIStatusError], str] = (
            openai.UnprocessableEntityError,
            f"{ref} cannot be served",
        )
        if engine == "vllm" and case[0].startswith("7:"):  # vLLM's rank limit comes first
            refusal = (openai.BadRequestError, "above this server's max_lora_rank")
        with pytest.raises(refusal[0], match=refusal[1]):
            chat(client, ref, "hi")
    still_serves(client, before)
