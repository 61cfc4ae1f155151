"""The registry's contract, run against every store backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import refused

from switchboard_lora.base_pull import get_or_hint
from switchboard_lora.registry import (
    MANIFEST_FILE,
    BaseModelInfo,
    BaseModels,
    ErrorCode,
    ManifestDraft,
    Registry,
    SwitchboardError,
)
from switchboard_lora.registry.manifest import Component
from switchboard_lora.registry.tensors import read_tensor_index, sha256_file


def _blob_count(home: Path) -> int:
    root = home / "blobs" / "sha256"
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def test_publish_records_a_complete_manifest(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path
) -> None:
    manifest = registry.publish(lora_dir, "legal", tiny_base)
    assert (manifest.name, manifest.version, manifest.ref) == ("legal", 1, "legal:1")
    assert manifest.method == "lora"
    assert manifest.rank == 4 and manifest.alpha == 8.0
    assert manifest.target_modules == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert manifest.base.fingerprint == tiny_base.fingerprint
    assert set(manifest.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    for rel, entry in manifest.files.items():
        assert entry.sha256 == sha256_file(lora_dir / rel)
        assert registry.blobs.check(entry.sha256, entry.size) is None  # stored, intact
    assert manifest.served_name == f"legal-v1-{manifest.content_digest[:12]}"
    assert manifest.tools["switchboard-lora"]  # this distribution, not PyPI's `switchboard`
    assert manifest.parent is None and manifest.components == []
    assert registry.manifest("legal:1") == manifest


def test_versions_increase_and_refs_resolve(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    first = registry.publish(lora_dir, "legal", tiny_base)
    second = registry.publish(lora_dir_2, "legal", tiny_base)
    assert (first.version, second.version) == (1, 2)
    assert registry.resolve("legal").version == 2  # no prod alias: latest
    assert registry.resolve("legal:1").version == 1
    registry.set_alias("legal", "prod", 1)
    assert registry.resolve("legal").version == 1  # prod wins over latest
    registry.set_alias("legal", "canary", 2)
    assert registry.resolve("legal@canary").version == 2
    assert registry.resolve("legal:1").aliases == ("prod",)
    registry.set_alias("legal", "prod", 2)  # moved, not copied
    assert registry.resolve("legal").version == 2
    assert registry.resolve("legal:2").aliases == ("canary", "prod")
    registry.remove_alias("legal", "prod")
    assert registry.resolve("legal").version == 2
    with refused(ErrorCode.NOT_FOUND, "no alias 'prod'"):
        registry.remove_alias("legal", "prod")
    with refused(ErrorCode.NOT_FOUND, "legal:9 does not exist"):
        registry.resolve("legal:9")
    with refused(ErrorCode.NOT_FOUND, "no adapter named 'nope'"):
        registry.resolve("nope")
    with refused(ErrorCode.NOT_FOUND, "no alias 'beta'"):
        registry.resolve("legal@beta")
    with refused(ErrorCode.NOT_FOUND, "legal:7 does not exist"):
        registry.set_alias("legal", "prod", 7)


def test_same_content_new_version_gets_a_new_served_name(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    one = registry.publish(lora_dir, "a", tiny_base)
    again = registry.publish(lora_dir, "a", tiny_base)
    other = registry.publish(lora_dir_2, "a", tiny_base)
    assert one.content_digest == again.content_digest != other.content_digest
    names = {one.served_name, again.served_name, other.served_name}
    assert len(names) == 3
    assert other.served_name.endswith(other.content_digest[:12])


def test_a_served_name_is_a_ref_to_exactly_its_content(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    one = registry.publish(lora_dir, "legal", tiny_base)
    two = registry.publish(lora_dir_2, "legal", tiny_base)
    assert registry.resolve(one.served_name) == registry.resolve("legal:1")
    assert registry.resolve(two.served_name).version == 2
    assert registry.checkout(one.served_name)[0].served_name == one.served_name
    # version 1's number with version 2's digest names nothing
    with refused(ErrorCode.NOT_FOUND, "is not legal:1's content"):
        registry.resolve(f"legal-v1-{two.content_digest[:12]}")
    with refused(ErrorCode.NOT_FOUND, "does not exist"):
        registry.resolve(f"legal-v3-{two.content_digest[:12]}")
    registry.delete(one.served_name)
    with refused(ErrorCode.NOT_FOUND, "was deleted"):
        registry.resolve(one.served_name)


@pytest.mark.parametrize(
    "name",
    ["Legal", "", "-x", "a" * 64, "has space", "ünï", "x/y", "base", "auto", "a-v1-0123456789ab"],
)
def test_bad_names_are_refused(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, home: Path, name: str
) -> None:
    with refused(ErrorCode.INVALID_NAME, repr(name)):
        registry.publish(lora_dir, name, tiny_base)
    assert registry.list_adapters() == []
    assert _blob_count(home) == 0


@pytest.mark.parametrize("ref", ["legal:0", "legal:x", "legal:", "legal@", "le gal", "a:1@b"])
def test_bad_refs_are_refused(registry: Registry, ref: str) -> None:
    with pytest.raises(SwitchboardError) as info:
        registry.resolve(ref)
    assert info.value.code in (ErrorCode.INVALID_REF, ErrorCode.INVALID_NAME)


def _broken_copy(src: Path, dst: Path, edit: str) -> Path:
    shutil.copytree(src, dst)
    if edit == "no-config":
        (dst / "adapter_config.json").unlink()
    elif edit == "bad-json":
        (dst / "adapter_config.json").write_text("{not json")
    elif edit == "bin-only":
        (dst / "adapter_model.safetensors").rename(dst / "adapter_model.bin")
    elif edit == "truncated":
        data = (dst / "adapter_model.safetensors").read_bytes()
        (dst / "adapter_model.safetensors").write_bytes(data[:6])
    elif edit == "bad-type":
        config = json.loads((dst / "adapter_config.json").read_text())
        config["peft_type"] = "IA3"
        (dst / "adapter_config.json").write_text(json.dumps(config))
    elif edit == "subdir":
        (dst / "nested").mkdir()
    elif edit in _CONFIG_EDITS:
        config = json.loads((dst / "adapter_config.json").read_text())
        config.update(_CONFIG_EDITS[edit])
        (dst / "adapter_config.json").write_text(json.dumps(config))
    else:
        _edit_weights(dst / "adapter_model.safetensors", edit)
    return dst


# Issue 15 item 4: configs the engines cannot serve, which publish used to accept.
_CONFIG_EDITS: dict[str, dict[str, Any]] = {
    "dora": {"use_dora": True},
    "bias": {"bias": "all"},
    "fan-in-fan-out": {"fan_in_fan_out": True},
    "modules-to-save": {"modules_to_save": ["lm_head"]},
    "alpha-pattern": {"alpha_pattern": {"q_proj": 64}},
    "huge-alpha": {"lora_alpha": 1e38},
}


def _edit_weights(path: Path, edit: str) -> None:
    """Break a safetensors file the way a careless or hostile writer would."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = bytearray(data[8 + length :])
    names = sorted(k for k in header if k != "__metadata__")
    first, second = header[names[0]], header[names[1]]
    if edit == "data-truncated":
        body = body[:-64]
    elif edit == "offset-past-end":
        first["data_offsets"][1] += 10**6
    elif edit == "overlap":
        second["data_offsets"] = list(first["data_offsets"])
        second["shape"] = list(first["shape"])
    elif edit == "dtype-mismatch":
        first["dtype"] = "F16"
    elif edit == "nan":
        start = first["data_offsets"][0]
        body[start : start + 4] = struct.pack("<f", float("nan"))
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(body))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("no-config", "no adapter_config.json"),
        ("bad-json", "not valid JSON"),
        ("bin-only", "safe_serialization=True"),
        ("truncated", "not a readable safetensors file"),
        ("bad-type", "'IA3' is not supported"),
        ("subdir", "nested is not a plain file"),
        ("data-truncated", "outside the file"),
        ("offset-past-end", "outside the file"),
        ("overlap", "overlap"),
        ("dtype-mismatch", "do not hold F16"),
        ("nan", "non-finite weights"),
        ("dora", "DoRA cannot be served"),
        ("bias", "LoRA biases cannot be served"),
        ("fan-in-fan-out", "fan_in_fan_out"),
        ("modules-to-save", "modules_to_save cannot be served"),
        ("alpha-pattern", "alpha_pattern cannot be served"),
        ("huge-alpha", "scale lora_alpha/r"),
    ],
)
def test_invalid_adapter_dirs_are_refused_and_nothing_is_written(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
    home: Path,
    edit: str,
    message: str,
) -> None:
    broken = _broken_copy(lora_dir, tmp_path / "broken", edit)
    with refused(ErrorCode.INVALID_ADAPTER, message):
        registry.publish(broken, "legal", tiny_base)
    assert registry.list_adapters() == []
    assert _blob_count(home) == 0


def test_adapter_for_another_base_is_refused(
    registry: Registry, tiny_base: BaseModelInfo, foreign_lora_dir: Path, home: Path
) -> None:
    with refused(ErrorCode.INCOMPATIBLE_BASE, "does not fit base"):
        registry.publish(foreign_lora_dir, "legal", tiny_base)
    assert registry.list_adapters() == [] and _blob_count(home) == 0


def test_manifest_claiming_another_base_is_refused(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(lora_dir, tmp_path / "claims")
    draft = {"base": {"id": "elsewhere", "fingerprint": "sha256:" + "0" * 64}}
    (copy / MANIFEST_FILE).write_text(json.dumps(draft))
    with refused(ErrorCode.INCOMPATIBLE_BASE, "was made for base elsewhere"):
        registry.publish(copy, "legal", tiny_base)


def test_checksum_mismatch_against_the_manifest_is_refused(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path, home: Path
) -> None:
    registry.publish(lora_dir, "legal", tiny_base)
    exported = tmp_path / "exported"
    registry.export("legal:1", exported)
    config = json.loads((exported / "adapter_config.json").read_text())
    (exported / "adapter_config.json").write_text(json.dumps({**config, "inference_mode": False}))
    blobs_before = _blob_count(home)
    with refused(ErrorCode.INTEGRITY, "checksum of adapter_config.json does not match"):
        registry.publish(exported, "copy", tiny_base)
    assert [a.name for a in registry.list_adapters()] == ["legal"]
    assert _blob_count(home) == blobs_before


def test_invalid_manifest_names_the_problem(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(lora_dir, tmp_path / "bad-manifest")
    (copy / MANIFEST_FILE).write_text(json.dumps({"metrics": {"loss": "low"}}))
    with refused(ErrorCode.INVALID_MANIFEST, "metrics.loss"):
        registry.publish(copy, "legal", tiny_base)


def test_export_round_trips_and_republishes(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path
) -> None:
    draft = ManifestDraft(
        metrics={"eval_loss": 1.5}, routing_examples=["what is a tort?"], description="law"
    )
    original = registry.publish(lora_dir, "legal", tiny_base, draft=draft)
    out = tmp_path / "out"
    registry.export("legal", out)
    for rel in original.files:
        assert sha256_file(out / rel) == sha256_file(lora_dir / rel)
    assert json.loads((out / MANIFEST_FILE).read_text())["served_name"] == original.served_name
    copy = registry.publish(out, "legal-copy", tiny_base, parent="legal:1")
    assert copy.content_digest == original.content_digest
    assert copy.routing_examples == ["what is a tort?"] and copy.metrics == {"eval_loss": 1.5}
    assert copy.parent == "legal:1"
    assert registry.resolve("legal-copy").parent == "legal:1"
    with refused(ErrorCode.ALREADY_EXISTS, "not empty"):
        registry.export("legal", out)


def test_prefix_adapter(registry: Registry, tiny_base: BaseModelInfo, prefix_dir: Path) -> None:
    manifest = registry.publish(prefix_dir, "styled", tiny_base)
    assert manifest.method == "prefix"
    assert manifest.num_virtual_tokens == 3 and manifest.rank is None


def test_lineage_parent_and_mixture_components(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    registry.publish(lora_dir, "math", tiny_base)
    registry.publish(lora_dir_2, "code", tiny_base)
    retrained = registry.publish(lora_dir_2, "math", tiny_base, parent="math")
    assert retrained.parent == "math:1"
    draft = ManifestDraft(
        components=[{"ref": "math:2", "weight": 0.7}, {"ref": "code", "weight": 0.3}]  # type: ignore[list-item]
    )
    mix = registry.publish(lora_dir, "mix-abc", tiny_base, draft=draft)
    assert [(c.ref, c.weight) for c in mix.components] == [("math:2", 0.7), ("code:1", 0.3)]
    with refused(ErrorCode.NOT_FOUND, "no adapter named 'ghost'"):
        registry.publish(lora_dir, "math", tiny_base, parent="ghost")
    assert registry.resolve("math").version == 2  # the refused publish left nothing


def test_delete_is_soft_and_refused_while_aliased(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    registry.publish(lora_dir, "legal", tiny_base)
    registry.publish(lora_dir_2, "legal", tiny_base)
    registry.set_alias("legal", "canary", 2)
    with refused(ErrorCode.CONFLICT, "canary"):
        registry.delete("legal:2")
    registry.remove_alias("legal", "canary")
    deleted = registry.delete("legal:2")
    assert deleted.deleted
    assert registry.resolve("legal").version == 1
    with refused(ErrorCode.NOT_FOUND, "legal:2 was deleted"):
        registry.resolve("legal:2")
    assert [v.version for v in registry.list_versions("legal")] == [1]
    history = registry.list_versions("legal", include_deleted=True)
    assert [(v.version, v.deleted) for v in history] == [(1, False), (2, True)]
    assert registry.publish(lora_dir_2, "legal", tiny_base).version == 3  # never reused
    assert [(a.name, a.versions, a.latest) for a in registry.list_adapters()] == [("legal", 2, 3)]


def test_verify_and_checkout_refuse_corrupted_or_missing_files(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    prefix_dir: Path,
    tamper: Callable[[str, bytes | None], None],
) -> None:
    lora = registry.publish(lora_dir, "legal", tiny_base)
    registry.publish(prefix_dir, "styled", tiny_base)
    assert all(r.ok for r in registry.verify())
    info, path = registry.checkout("legal")
    assert info.served_name == lora.served_name and path.name == lora.served_name
    assert (path / MANIFEST_FILE).is_file()

    weights = lora.files["adapter_model.safetensors"].sha256
    data = bytearray((lora_dir / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    tamper(weights, bytes(data))  # the stored bytes change; their key does not
    results = {r.ref: r for r in registry.verify()}
    assert (
        not results["legal:1"].ok
        and "adapter_model.safetensors: sha256" in results["legal:1"].problems[0]
    )
    assert results["styled:1"].ok
    # The earlier checkout is re-hashed against the manifest, then rebuilt from the blob,
    # which is corrupted too: the version is refused, not handed out.
    (path / "adapter_model.safetensors").write_bytes(b"tampered")
    with refused(ErrorCode.INTEGRITY, "legal:1 cannot be used"):
        registry.checkout("legal")

    registry.publish(lora_dir, "legal", tiny_base)  # the same content again heals the blob
    assert all(r.ok for r in registry.verify())
    assert registry.checkout("legal:1")[1].is_dir()

    tamper(weights, None)
    assert "missing" in registry.verify("legal:1")[0].problems[0]
    assert registry.checkout("styled")[1].is_dir()  # other versions keep serving


def test_concurrent_checkouts_all_get_whole_verified_files(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path
) -> None:
    """A server's first requests for a new version check it out at once, from threads; a
    damaged checkout is replaced under them. No caller may see a half-built directory."""
    import threading

    from switchboard_lora.registry.tensors import sha256_file

    manifest = registry.publish(lora_dir, "legal", tiny_base)
    expected = manifest.files["adapter_model.safetensors"].sha256
    for round_ in range(8):  # the first round builds it; every later one finds it damaged
        if round_:  # replaced, never handed out, and the good new one never removed
            path = registry.checkout("legal")[1] / "adapter_model.safetensors"
            path.write_bytes(b"damaged")
        barrier = threading.Barrier(12)
        seen: list[str] = []

        def check_out(barrier: threading.Barrier = barrier, seen: list[str] = seen) -> None:
            barrier.wait()
            _, path = registry.checkout("legal")
            seen.append(sha256_file(path / "adapter_model.safetensors"))

        threads = [threading.Thread(target=check_out) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [expected] * 12, round_


def test_list_versions_of_unknown_adapter(registry: Registry) -> None:
    with refused(ErrorCode.NOT_FOUND, "no adapter named 'nope'"):
        registry.list_versions("nope")


def test_base_models_get_by_path_and_refuse_non_models(
    tiny_base_dir: Path, home: Path, tmp_path: Path
) -> None:
    bases = BaseModels(home / "bases")
    info = bases.get(str(tiny_base_dir))
    assert info.fingerprint.startswith("sha256:") and info.source == "path"
    assert bases.get(str(tiny_base_dir)).fingerprint == info.fingerprint
    with refused(ErrorCode.NOT_FOUND, "not a Hugging Face model directory"):
        bases.get(str(tmp_path))
    with refused(ErrorCode.NOT_FOUND, "not a cached base (cached: none) nor a model directory"):
        bases.get("smollm2-135m-instruct")
    # The registry only looks up; the layer that knows how to obtain a base says how.
    with refused(ErrorCode.NOT_FOUND, "switchboard base pull smollm2-135m-instruct"):
        get_or_hint(bases, "smollm2-135m-instruct")


def test_verify_reports_versions_the_engines_cannot_load_and_restores_damaged_checkouts(
    registry: Registry,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15 items 4 and 5: a version published before the checks existed is reported;
    a checkout changed on disk is found and restored (it used to be trusted after first use)."""
    import switchboard_lora.registry.adapter_dir as adapter_dir

    good = registry.publish(lora_dir, "legal", tiny_base)
    nan = _broken_copy(lora_dir, tmp_path / "nan", "nan")
    with monkeypatch.context() as old_switchboard:  # as published before the check
        unread = lambda path: dict.fromkeys(read_tensor_index(path), 0.0)  # noqa: E731
        old_switchboard.setattr(adapter_dir, "tensor_magnitudes", unread)
        registry.publish(nan, "old", tiny_base)
    results = {r.ref: r for r in registry.verify(bases=[tiny_base])}
    assert results["legal:1"].ok and not (results["legal:1"].repaired or results["legal:1"].notes)
    assert not results["old:1"].ok and "non-finite" in results["old:1"].problems[0]

    _, path = registry.checkout("legal")
    weights = path / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\x00\x00\x80\x7f")  # same size, lora_B overwritten
    [result] = registry.verify("legal", [tiny_base])
    assert result.ok and "restored" in result.repaired[0]
    assert weights.read_bytes() == original
    assert good.served_name == path.name


def test_the_mix_prefix_is_reserved_and_only_mixes_are_purged(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, lora_dir_2: Path
) -> None:
    """Issue 15 item 9: a hand publish could take a `mix-` name."""
    with refused(ErrorCode.INVALID_NAME, "reserved for the mixes"):
        registry.publish(lora_dir, "mix-0123456789ab", tiny_base)
    registry.publish(lora_dir, "legal", tiny_base)
    registry.publish(lora_dir_2, "medical", tiny_base)
    draft = ManifestDraft(
        components=[Component(ref="legal:1", weight=0.5), Component(ref="medical:1", weight=0.5)]
    )
    mix = registry.publish(lora_dir, "mix-0123456789ab", tiny_base, draft=draft)
    _, checkout = registry.checkout(mix.ref)
    with refused(ErrorCode.CONFLICT, "not a derived version"):
        registry.purge("legal:1")
    registry.set_alias(mix.name, "pinned", 1)
    with refused(ErrorCode.CONFLICT, "an alias"):
        registry.purge(mix.ref)
    registry.remove_alias(mix.name, "pinned")
    registry.purge(mix.ref)
    assert registry.find(mix.ref) is None and not checkout.exists()
    assert [a.name for a in registry.list_adapters()] == ["legal", "medical"]
    assert registry.gc(min_age_seconds=0, dry_run=True) == []  # its blobs are legal's too


@pytest.mark.parametrize("where", ["dangling-link", "under-a-file", "proc", "link-to-empty"])
def test_export_refuses_odd_destinations_with_a_reason(
    registry: Registry, tiny_base: BaseModelInfo, lora_dir: Path, tmp_path: Path, where: str
) -> None:
    """Issue 15 item 11: these printed raw tracebacks, or wrote through a link."""
    registry.publish(lora_dir, "legal", tiny_base)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("x")
    dest = {
        "dangling-link": tmp_path / "dangling",
        "under-a-file": tmp_path / "file" / "out",
        "proc": Path("/proc/self/nope"),
        "link-to-empty": tmp_path / "link",
    }[where]
    if where == "dangling-link":
        dest.symlink_to(tmp_path / "missing")
    if where == "link-to-empty":
        dest.symlink_to(empty)
    with pytest.raises(SwitchboardError) as failed:
        registry.export("legal", dest)
    assert failed.value.code == ErrorCode.INVALID_INPUT
    assert str(dest) in failed.value.message
    assert list(empty.iterdir()) == []
