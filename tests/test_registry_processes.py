"""The registry under real processes: concurrent publishers, and publishes killed half-way."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from switchboard_lora.registry import BaseModelInfo, Registry
from switchboard_lora.registry.blobs import BlobStore

# Run in a child process. argv: database_url home base_dir adapter_dir name count go_file
# kill_at blob_url blob_options_json
_PUBLISHER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from switchboard_lora.registry import BaseModels, Registry
    from switchboard_lora.registry.blobs import open_blob_store

    url, home, base_dir, adapter_dir, name, count, go, kill_at, blob_url, options = sys.argv[1:11]
    home = Path(home)
    ready = home / f"ready-{os.getpid()}"
    blobs = open_blob_store(blob_url or None, home, json.loads(options))

    def stall():  # tell the test where we are, then wait to be killed
        ready.write_text("stalled")
        time.sleep(600)

    if kill_at == "blobs":  # after the first file reached the blob store
        put = type(blobs).put
        def put_then_stall(self, source):
            result = put(self, source)
            stall()
            return result
        type(blobs).put = put_then_stall
    elif kill_at == "rows":  # inside the transaction, the version row already flushed
        import switchboard_lora.registry.store as store
        def stalled_row(**kwargs):
            stall()
        store.FileRow = stalled_row

    base = BaseModels(home / "bases").get(base_dir)
    registry = Registry(url, home, blobs)
    while not Path(go).exists():
        time.sleep(0.005)
    published = [registry.publish(Path(adapter_dir), name, base).version for _ in range(int(count))]
    print(json.dumps(published))
    """
)


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _store_args(blob_spec: tuple[str | None, dict[str, str]]) -> list[str]:
    return [blob_spec[0] or "", json.dumps(blob_spec[1])]


def test_concurrent_publishers_get_distinct_versions(
    registry: Registry,
    database_url: str,
    home: Path,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
    blob_spec: tuple[str | None, dict[str, str]],
) -> None:
    go = tmp_path / "go"
    args = [database_url, str(home), str(tiny_base.path), str(lora_dir), "legal", "3", str(go)]
    procs = [_spawn([*args, "", *_store_args(blob_spec)]) for _ in range(4)]
    time.sleep(3)  # let every child import and connect, then start them at the same moment
    go.touch()
    seen: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        seen += json.loads(out)
    assert sorted(seen) == list(range(1, 13))
    versions = registry.list_versions("legal")
    assert [v.version for v in versions] == list(range(1, 13))
    assert len({v.served_name for v in versions}) == 12
    assert all(r.ok for r in registry.verify())


@pytest.mark.parametrize("kill_at", ["blobs", "rows"])
def test_publish_killed_half_way_leaves_nothing_visible(
    registry: Registry,
    database_url: str,
    home: Path,
    tiny_base: BaseModelInfo,
    lora_dir: Path,
    tmp_path: Path,
    kill_at: str,
    blob_spec: tuple[str | None, dict[str, str]],
    blob_store: BlobStore,
) -> None:
    go = tmp_path / "go"
    go.touch()
    proc = _spawn(
        [
            database_url,
            str(home),
            str(tiny_base.path),
            str(lora_dir),
            "legal",
            "1",
            str(go),
            kill_at,
            *_store_args(blob_spec),
        ]
    )
    deadline = time.monotonic() + 120
    while not list(home.glob("ready-*")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the child never reached its kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    # A fresh handle sees no version, no adapter, and a usable store; gc removes the orphans.
    fresh = Registry(database_url, home, blob_store)
    try:
        assert fresh.list_adapters() == []
        assert fresh.verify() == []
        orphans = fresh.gc(min_age_seconds=0, dry_run=True)
        assert orphans  # the killed publish had stored at least one blob
        assert fresh.gc(min_age_seconds=3600) == []  # too young: could be a publish in flight
        assert fresh.gc(min_age_seconds=0) == orphans
        assert {b.key for b in orphans}.isdisjoint(b.key for b in fresh.blobs.stored())
        manifest = fresh.publish(lora_dir, "legal", tiny_base)
        assert manifest.version == 1
        assert fresh.gc(min_age_seconds=0) == []  # referenced blobs stay
        assert [r.ok for r in fresh.verify()] == [True]
    finally:
        fresh.close()
