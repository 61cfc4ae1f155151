"""Registry benchmark: publish a 10 MB adapter, resolve a ref, list 1,000 versions.

    python -m bench.registry [--database-url URL] [--json]

Uses the real default base (pulled into $SWITCHBOARD_HOME once) and a fresh registry in a
temporary directory. Each figure is a median, printed beside a baseline measured in the same
run (plain copy + sha256 of the same file; the same lookup as one raw sqlite3 query), so the
ratios hold on a noisy machine. Targets (SQLite): resolve <= 1 ms, list <= 50 ms, publish <= 1 s.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import default_base
from registry import PROJECTIONS, BaseModelInfo, Registry
from trainer.synthetic import random_adapter

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


def run(database_url: str | None, repeat: int) -> dict[str, Any]:
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


def main(
    database_url: Annotated[str | None, typer.Option(help="Default: SQLite in a temp dir.")] = None,
    repeat: Annotated[int, typer.Option(help="Publishes of the 10 MB adapter.")] = 9,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    r = run(database_url, repeat)
    if as_json:
        print(json.dumps(r, indent=2))
        return
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
    typer.run(main)
