"""This machine's copies of versions (for an object store, its download cache): bounded by
`cache_max_bytes`, least recently used first, never a version a process holds; safe when
processes check out the same version at once. On local files and on an S3 bucket."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from switchboard_lora.registry import BaseModelInfo, Registry
from switchboard_lora.registry.blobs import BlobStore
from switchboard_lora.registry.tensors import sha256_file
from switchboard_lora.trainer.synthetic import random_adapter

# A process that checks a version out (holding it), says so, and waits for the go file.
# argv: database_url home ref go blob_url blob_options
_HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from switchboard_lora.registry import Registry
    from switchboard_lora.registry.blobs import open_blob_store
    from switchboard_lora.registry.tensors import sha256_file

    url, home, ref, go, blob_url, options = sys.argv[1:7]
    home = Path(home)
    registry = Registry(url, home, open_blob_store(blob_url or None, home, json.loads(options)))
    info, path = registry.checkout(ref)
    print(sha256_file(path / "adapter_model.safetensors"), flush=True)
    while not Path(go).exists():
        time.sleep(0.01)
    """
)


def _publish_three(registry: Registry, base: BaseModelInfo, tmp: Path) -> tuple[list[str], int]:
    """legal:1-3, adapters of one size: their served names, and that size in bytes."""
    for seed in (1, 2, 3):
        registry.publish(random_adapter(base.path, tmp / f"a{seed}", seed=seed), "legal", base)
    names = [registry.resolve(f"legal:{v}").served_name for v in (1, 2, 3)]
    return names, sum(e.size for e in registry.manifest("legal:1").files.values())


def _checked_out(home: Path) -> set[str]:
    return {p.name for p in (home / "checkouts").iterdir() if not p.name.startswith(".")}


def _holder(args: list[str], blob_spec: tuple[str | None, dict[str, str]]) -> subprocess.Popen[str]:
    extra = [blob_spec[0] or "", json.dumps(blob_spec[1])]
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_least_recently_used_unheld_versions_go_first_and_come_back_on_demand(
    registry: Registry,
    database_url: str,
    home: Path,
    blob_store: BlobStore,
    tiny_base: BaseModelInfo,
    tmp_path: Path,
) -> None:
    names, size = _publish_three(registry, tiny_base, tmp_path)
    first = Registry(database_url, home, blob_store, cache_max_bytes=int(2.5 * size))
    first.checkout("legal:1")
    first.close()  # legal:1 is no longer held by anyone
    bounded = Registry(database_url, home, blob_store, cache_max_bytes=int(2.5 * size))
    try:
        bounded.checkout("legal:2")
        assert _checked_out(home) == {names[0], names[1]}
        bounded.checkout("legal:3")  # over the bound: the oldest unheld one goes
        assert _checked_out(home) == {names[1], names[2]}
        _, again = bounded.checkout("legal:1")  # and comes back, verified, when asked for
        expected = registry.manifest("legal:1").files["adapter_model.safetensors"].sha256
        assert sha256_file(again / "adapter_model.safetensors") == expected
        # legal:2 and legal:3 are held by this process: over the bound, but never removed.
        assert _checked_out(home) == set(names)
    finally:
        bounded.close()


def test_a_version_another_process_holds_is_not_evicted(
    registry: Registry,
    database_url: str,
    home: Path,
    blob_store: BlobStore,
    blob_spec: tuple[str | None, dict[str, str]],
    tiny_base: BaseModelInfo,
    tmp_path: Path,
) -> None:
    names, size = _publish_three(registry, tiny_base, tmp_path)
    go = tmp_path / "go"
    holder = _holder([database_url, str(home), "legal:1", str(go)], blob_spec)
    assert holder.stdout is not None and holder.stdout.readline().strip()  # it holds legal:1
    bounded = Registry(database_url, home, blob_store, cache_max_bytes=int(1.5 * size))
    try:
        bounded.checkout("legal:2")
        bounded.checkout("legal:3")
        assert names[0] in _checked_out(home)  # held elsewhere: stays, whatever the bound
        go.touch()
        assert holder.wait(timeout=60) == 0, holder.stderr.read() if holder.stderr else ""
        bounded.checkout("legal:2")  # re-verified, no download: nothing changes
        assert names[0] in _checked_out(home)
        fourth = random_adapter(tiny_base.path, tmp_path / "a4", seed=4)
        registry.publish(fourth, "legal", tiny_base)
        bounded.checkout("legal:4")  # the next download makes room: legal:1 is free now
        assert names[0] not in _checked_out(home)
    finally:
        bounded.close()


def test_processes_checking_out_one_version_at_once_all_get_it_whole(
    registry: Registry,
    database_url: str,
    home: Path,
    blob_spec: tuple[str | None, dict[str, str]],
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
) -> None:
    manifest = registry.publish(lora_dir, "legal", tiny_base)
    expected = manifest.files["adapter_model.safetensors"].sha256
    go = tmp_path / "go"
    go.touch()  # each exits right after its checkout
    procs = [_holder([database_url, str(home), "legal", str(go)], blob_spec) for _ in range(6)]
    seen = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        seen.append(out.strip())
    assert seen == [expected] * 6
    assert _checked_out(home) == {manifest.served_name}  # nothing half-built beside it
    leftovers = [p for p in (home / "checkouts").iterdir() if p.name.startswith(".legal")]
    assert leftovers == []
