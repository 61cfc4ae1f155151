"""Registry benchmark, three parts (default: all).

    python -m bench.registry [--part all|refs|stores|clients] [--database-url URL]
        [--s3-endpoint URL] [--json]

- refs: publish a 10 MB adapter, resolve a ref, list 1,000 versions. Targets (SQLite):
  resolve <= 1 ms, list <= 50 ms, publish <= 1 s.
- stores: publish, first checkout (download + verify) and cached checkout (re-hash) of a
  10 MB and a 200 MB adapter, local files vs an S3-compatible object store. Targets: a cached
  checkout costs what the local one does; a first checkout is within 1.5x of a raw download +
  sha256 of the same bytes with the same client.
- clients: obstore vs boto3, upload and download of the same two files.

Uses the real default base (pulled into ~/.switchboard once) and fresh registries in a
temporary directory; the object store is a moto server this benchmark starts on 127.0.0.1
(or `--s3-endpoint`). Each figure is a median, printed beside a baseline measured in the same
run, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import default_base, run_benchmark
from support.processes import free_port
from switchboard_lora.registry import PROJECTIONS, BaseModelInfo, Registry
from switchboard_lora.registry.tensors import sha256_file
from switchboard_lora.trainer.synthetic import random_adapter

TARGETS_MS = {"publish_10mb": 1000.0, "resolve": 1.0, "list_1000_versions": 50.0}


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _adapter_variants(
    base: BaseModelInfo, out: Path, rank: int, targets: tuple[str, ...], n: int
) -> list[Path]:
    """`n` real PEFT LoRA directories for `base`, same shapes, different weights (one random
    adapter, then noise on its tensors: faster than `n` models)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    template = random_adapter(base.path, out / "template", rank=rank, modules=targets)
    tensors = load_file(template / "adapter_model.safetensors")
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(n):
        variant = out / f"v{i}"
        shutil.copytree(template, variant)
        save_file(
            {k: (v + rng.normal(0, 1e-3, v.shape)).astype(np.float32) for k, v in tensors.items()},
            str(variant / "adapter_model.safetensors"),
        )
        dirs.append(variant)
    return dirs


def run_refs(database_url: str | None, repeat: int) -> dict[str, Any]:
    base = default_base()
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        url = database_url or f"sqlite:///{home / 'registry.db'}"
        registry = Registry(url, home)
        big = _adapter_variants(base, tmp / "big", 8, PROJECTIONS, repeat)
        weights_mb = (big[0] / "adapter_model.safetensors").stat().st_size / 1e6

        publish_times = []
        for directory in big:
            start = time.perf_counter()
            registry.publish(directory, "big", base)
            publish_times.append((time.perf_counter() - start) * 1000)

        def copy_and_hash() -> None:
            target = tmp / "copy.safetensors"
            shutil.copyfile(big[0] / "adapter_model.safetensors", target)
            hashlib.sha256(target.read_bytes()).hexdigest()
            target.unlink()

        copy_ms = _median_ms(copy_and_hash, repeat)

        small = _adapter_variants(base, tmp / "small", 1, ("q_proj",), 1)[0]
        for _ in range(1000):
            registry.publish(small, "many", base)
        registry.set_alias("many", "canary", 500)

        resolve = {
            ref: _median_ms(partial(registry.resolve, ref), 500)
            for ref in ("many", "many:777", "many@canary")
        }
        list_ms = _median_ms(lambda: registry.list_versions("many"), 30)
        list_adapters_ms = _median_ms(registry.list_adapters, 30)

        baseline_resolve = None
        if url.startswith("sqlite"):
            raw = sqlite3.connect(home / "registry.db")
            query = (
                "select v.* from adapter_versions v join adapters a on a.id = v.adapter_id "
                "where a.name = ? and v.version = ? and v.deleted_at is null"
            )
            baseline_resolve = _median_ms(lambda: raw.execute(query, ("many", 777)).fetchone(), 500)
            raw.close()
        registry.close()

    help_ms = _median_ms(
        lambda: subprocess.run(
            [str(Path(sys.executable).with_name("switchboard")), "--help"],
            capture_output=True,
            check=True,
        ),
        5,
    )
    results = {
        "database": url.split(":", 1)[0],
        "adapter_weights_mb": round(weights_mb, 2),
        "publish_10mb_ms": statistics.median(publish_times),
        "baseline_copy_and_hash_ms": copy_ms,
        "resolve_ms": resolve,
        "baseline_raw_sqlite_query_ms": baseline_resolve,
        "list_1000_versions_ms": list_ms,
        "list_adapters_ms": list_adapters_ms,
        "cli_help_ms": help_ms,
    }
    return results


S3_OPTIONS = {
    "aws_access_key_id": "bench",
    "aws_secret_access_key": "bench",
    "aws_region": "us-east-1",
    "allow_http": "true",
}


@contextmanager
def s3_server(endpoint: str | None) -> Iterator[str]:
    """The endpoint given, or a moto server started here for the run."""
    if endpoint:
        yield endpoint
        return
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _bucket(endpoint: str) -> str:

    name = f"bench-{uuid.uuid4().hex[:12]}"
    _boto(endpoint).create_bucket(Bucket=name)
    return name


def _boto(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_OPTIONS["aws_access_key_id"],
        aws_secret_access_key=S3_OPTIONS["aws_secret_access_key"],
        region_name=S3_OPTIONS["aws_region"],
    )


def _obstore(endpoint: str, bucket: str) -> Any:
    from obstore.store import S3Store

    config: Any = {k: v for k, v in S3_OPTIONS.items() if k.startswith("aws_")}
    config["aws_endpoint"] = endpoint
    return S3Store(bucket, config=config, client_options={"allow_http": True})


SIZES = {"10mb": 8, "200mb": 160}  # LoRA rank on the seven projections: ~10 MB and ~200 MB


def run_stores(endpoint: str, repeat: int) -> dict[str, Any]:
    """Publish, first and cached checkout per store and size; raw transfer baselines."""
    import obstore

    from switchboard_lora.registry.blobs import open_blob_store

    base = default_base()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sb-bench-stores-") as tmp_name:
        tmp = Path(tmp_name)
        for size, rank in SIZES.items():
            variants = _adapter_variants(base, tmp / size, rank, PROJECTIONS, repeat)
            weights = variants[0] / "adapter_model.safetensors"
            row: dict[str, Any] = {"mb": round(weights.stat().st_size / 1e6, 1)}
            for store in ("local", "s3"):
                home = tmp / f"{size}-{store}"
                bucket = _bucket(endpoint) if store == "s3" else None
                blobs = open_blob_store(
                    f"s3://{bucket}/registry" if bucket else None,
                    home,
                    {**S3_OPTIONS, "aws_endpoint": endpoint} if bucket else {},
                )
                registry = Registry(f"sqlite:///{home / 'registry.db'}", home, blobs)
                publish, first, cached = [], [], []
                for directory in variants:
                    start = time.perf_counter()
                    ref = registry.publish(directory, "big", base).ref
                    publish.append(time.perf_counter() - start)
                    shutil.rmtree(home / "checkouts", ignore_errors=True)
                    start = time.perf_counter()
                    registry.checkout(ref)
                    first.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    registry.checkout(ref)
                    cached.append(time.perf_counter() - start)
                registry.close()
                row[store] = {
                    "publish_s": statistics.median(publish),
                    "first_checkout_s": statistics.median(first),
                    "cached_checkout_s": statistics.median(cached),
                }

            # Baselines: the same bytes copied (local) or downloaded with obstore (s3), hashed.
            def copy_and_hash(weights: Path = weights) -> None:
                target = tmp / "copy.bin"
                shutil.copyfile(weights, target)
                sha256_file(target)
                target.unlink()

            raw_store = _obstore(endpoint, _bucket(endpoint))
            with weights.open("rb") as f:
                obstore.put(raw_store, "raw", f)

            def download_and_hash(store: Any = raw_store) -> None:
                digest = hashlib.sha256()
                with (tmp / "raw.bin").open("wb") as out:
                    for chunk in obstore.get(store, "raw").stream(min_chunk_size=8 << 20):
                        digest.update(chunk)
                        out.write(chunk)

            row["baseline_local_copy_sha256_s"] = _median_ms(copy_and_hash, repeat) / 1000
            row["baseline_s3_download_sha256_s"] = _median_ms(download_and_hash, repeat) / 1000
            row["s3_first_vs_raw_download"] = (
                row["s3"]["first_checkout_s"] / row["baseline_s3_download_sha256_s"]
            )
            row["s3_cached_vs_local_cached"] = (
                row["s3"]["cached_checkout_s"] / row["local"]["cached_checkout_s"]
            )
            results[size] = row
    return results


def run_clients(endpoint: str, repeat: int) -> dict[str, Any]:
    """obstore vs boto3: upload and download (to a file) of ~10 MB and ~200 MB, medians."""
    import os

    import obstore

    results: dict[str, Any] = {}
    bucket = _bucket(endpoint)
    boto, store = _boto(endpoint), _obstore(endpoint, bucket)
    with tempfile.TemporaryDirectory(prefix="sb-bench-clients-") as tmp_name:
        tmp = Path(tmp_name)
        for size, mb in (("10mb", 10), ("200mb", 200)):
            source = tmp / size
            source.write_bytes(os.urandom(mb * 1_000_000))

            def boto_up(source: Path = source) -> None:
                boto.upload_file(str(source), bucket, f"boto3/{source.name}")

            def boto_down(source: Path = source) -> None:
                boto.download_file(bucket, f"boto3/{source.name}", str(tmp / "down"))

            def obstore_up(source: Path = source) -> None:
                with source.open("rb") as f:
                    obstore.put(store, f"obstore/{source.name}", f)

            def obstore_down(source: Path = source) -> None:
                with (tmp / "down").open("wb") as out:
                    for chunk in obstore.get(store, f"obstore/{source.name}").stream():
                        out.write(chunk)

            results[size] = {
                "boto3_upload_s": _median_ms(boto_up, repeat) / 1000,
                "boto3_download_s": _median_ms(boto_down, repeat) / 1000,
                "obstore_upload_s": _median_ms(obstore_up, repeat) / 1000,
                "obstore_download_s": _median_ms(obstore_down, repeat) / 1000,
            }
    return results


def main(
    part: Annotated[str, typer.Option(help="all, refs, stores or clients")] = "all",
    database_url: Annotated[str | None, typer.Option(help="Default: SQLite in a temp dir.")] = None,
    s3_endpoint: Annotated[
        str | None, typer.Option(help="An S3-compatible endpoint (default: a moto server).")
    ] = None,
    repeat: Annotated[int, typer.Option(help="Repetitions behind each median.")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    report: dict[str, Any] = {}
    if part in ("all", "refs"):
        report["refs"] = run_refs(database_url, max(repeat, 3))
    if part in ("all", "stores", "clients"):
        with s3_server(s3_endpoint) as endpoint:
            if part in ("all", "stores"):
                report["stores"] = run_stores(endpoint, repeat)
            if part in ("all", "clients"):
                report["clients"] = run_clients(endpoint, repeat)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    if "refs" in report:
        print_refs(report["refs"])
    for size, row in report.get("stores", {}).items():
        print(f"\n{size} adapter ({row['mb']} MB), medians in s:")
        print(f"{'store':6} {'publish':>9} {'first checkout':>15} {'cached checkout':>16}")
        for store in ("local", "s3"):
            r = row[store]
            print(
                f"{store:6} {r['publish_s']:9.3f} {r['first_checkout_s']:15.3f} "
                f"{r['cached_checkout_s']:16.3f}"
            )
        print(
            f"baselines: local copy+sha256 {row['baseline_local_copy_sha256_s']:.3f} s, "
            f"S3 download+sha256 {row['baseline_s3_download_sha256_s']:.3f} s; "
            f"S3 first checkout {row['s3_first_vs_raw_download']:.2f}x the raw download "
            f"(target <= 1.5), S3 cached {row['s3_cached_vs_local_cached']:.2f}x local cached"
        )
    for size, row in report.get("clients", {}).items():
        print(
            f"\nclients, {size}: upload boto3 {row['boto3_upload_s']:.3f} s / obstore "
            f"{row['obstore_upload_s']:.3f} s; download boto3 {row['boto3_download_s']:.3f} s / "
            f"obstore {row['obstore_download_s']:.3f} s"
        )


def print_refs(r: dict[str, Any]) -> None:
    worst_resolve = max(r["resolve_ms"].values())
    rows = [
        (
            f"publish ({r['adapter_weights_mb']} MB LoRA)",
            r["publish_10mb_ms"],
            TARGETS_MS["publish_10mb"],
            f"{r['publish_10mb_ms'] / r['baseline_copy_and_hash_ms']:.1f}x copy+sha256",
        ),
        *[
            (
                f"resolve {ref}",
                ms,
                TARGETS_MS["resolve"],
                f"{ms / r['baseline_raw_sqlite_query_ms']:.1f}x raw sqlite3"
                if r["baseline_raw_sqlite_query_ms"]
                else "",
            )
            for ref, ms in r["resolve_ms"].items()
        ],
        ("list 1,000 versions", r["list_1000_versions_ms"], TARGETS_MS["list_1000_versions"], ""),
        ("list adapters", r["list_adapters_ms"], None, ""),
        ("switchboard --help", r["cli_help_ms"], None, ""),
    ]
    print(f"registry benchmark on {r['database']} (medians)")
    print(f"{'operation':32} {'median ms':>10} {'target':>8}  vs baseline")
    for label, ms, target, ratio in rows:
        mark = "" if target is None else ("ok" if ms <= target else "MISSED")
        target_text = "" if target is None else f"{target:g}"
        print(f"{label:32} {ms:10.3f} {target_text:>8}  {ratio} {mark}")
    print(f"baselines: copy+sha256 {r['baseline_copy_and_hash_ms']:.2f} ms", end="")
    if r["baseline_raw_sqlite_query_ms"]:
        print(f", raw sqlite3 query {r['baseline_raw_sqlite_query_ms']:.3f} ms")
    else:
        print()
    print(f"worst resolve: {worst_resolve:.3f} ms")


if __name__ == "__main__":
    run_benchmark(main)
