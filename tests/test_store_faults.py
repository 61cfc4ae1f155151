"""Issue 34, items 17-20: a store or database that fails says so, in one clear line and in
bounded time, and loses nothing. A real S3-compatible server process (moto's) frozen with
SIGSTOP or killed; real SQLite files overwritten or cut short; the real `switchboard` command
and a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import make_bucket, moto_server, refused, s3_options
from fastapi.testclient import TestClient
from serving_world import make_lora

from support.paths import SWITCHBOARD
from switchboard_lora.registry import (
    BaseModelInfo,
    BaseModels,
    ErrorCode,
    Registry,
    RegistrySettings,
)
from switchboard_lora.registry.blobs import open_blob_store
from switchboard_lora.registry.store import open_registry
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.settings import ServerSettings

TIMEOUT_S = 1.0  # the store's timeout in these tests: a call fails within a few of these
BOUND_S = 8 * TIMEOUT_S + 2  # two files, each a call retried up to its timeout, and slack


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An S3-compatible server of this test's own, to freeze or kill."""
    with moto_server(tmp_path / "moto.log") as (endpoint, proc):
        try:
            yield endpoint, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a frozen process ignores the kill's wait


def _s3_settings(endpoint: str, home: Path, **more: object) -> RegistrySettings:
    url = f"s3://{make_bucket(endpoint)}/registry"
    return RegistrySettings(
        home=home, blob_url=url, blob_options=s3_options(endpoint), blob_timeout_s=TIMEOUT_S
    ).model_copy(update=more)


def _cold_replica(settings: RegistrySettings, home: Path) -> Registry:
    """Another machine on the same registry: its own (empty) download cache."""
    return open_registry(
        settings.model_copy(update={"home": home, "database_url": settings.registry_url})
    )


def _unavailable(call: Callable[[], object], url: str) -> float:
    """Seconds until `call` failed as `unavailable`, naming the store."""
    started = time.monotonic()
    with refused(ErrorCode.UNAVAILABLE, f"the object store {url}"):
        call()
    return time.monotonic() - started


@pytest.mark.s3
@pytest.mark.parametrize("fault", ["frozen", "down"])
def test_an_unreachable_object_store_fails_naming_it_in_bounded_time(
    fault: str,
    own_s3: tuple[str, subprocess.Popen[bytes]],
    tmp_path: Path,
    tiny_base_dir: Path,
    lora_dir: Path,
) -> None:
    """Items 17 and 18: a frozen store answered nothing for 181 s, then a 500; a killed one
    was a 500 `internal_error`. Both are `unavailable` naming the store, within a bound the
    setting gives; nothing already published is lost (a thawed store serves it)."""
    endpoint, proc = own_s3
    settings = _s3_settings(endpoint, tmp_path / "publisher")
    publisher = open_registry(settings)
    publisher.publish(lora_dir, "legal", BaseModels(tmp_path / "bases").get(str(tiny_base_dir)))
    replica = _cold_replica(settings, tmp_path / "replica")
    url = settings.blob_url or ""
    try:
        proc.send_signal(signal.SIGSTOP) if fault == "frozen" else proc.kill()
        assert _unavailable(lambda: replica.checkout("legal"), url) < BOUND_S
        assert _unavailable(lambda: replica.gc(min_age_seconds=0), url) < BOUND_S
        assert not any((tmp_path / "replica" / "checkouts").rglob("*.safetensors"))
        if fault == "frozen":
            proc.send_signal(signal.SIGCONT)
            info, directory = replica.checkout("legal")
            assert info.ref == "legal:1" and (directory / "adapter_model.safetensors").exists()
    finally:
        replica.close()
        publisher.close()


@pytest.mark.s3
def test_gc_aborts_the_uploads_a_killed_publish_left(
    s3_endpoint: str, home: Path, tiny_base: BaseModelInfo, lora_dir: Path
) -> None:
    """Item 19: kill -9 during an upload left its multipart upload's parts (tens of MB) in
    the bucket for ever; `gc` now aborts those older than its minimum age, like any other
    leftover. The upload is made as obstore makes one for a blob, by the bucket's own API."""
    import boto3

    bucket = make_bucket(s3_endpoint)
    options = s3_options(s3_endpoint)
    registry = Registry(
        RegistrySettings(home=home).registry_url,
        home,
        open_blob_store(f"s3://{bucket}/registry", home, options),
    )
    registry.publish(lora_dir, "legal", tiny_base)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    sha = "ab" * 32
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"registry/sha256/ab/{sha}")
    s3.upload_part(
        Bucket=bucket,
        Key=f"registry/sha256/ab/{sha}",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"x" * (5 << 20),
    )
    try:
        assert registry.gc(min_age_seconds=3600) == []  # young: a publish may be in flight
        doomed = registry.gc(min_age_seconds=0, dry_run=True)
        assert [(upload["UploadId"] in blob.key, blob.size) for blob in doomed] == [(True, 5 << 20)]
        assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
        assert registry.gc(min_age_seconds=0) == doomed
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert registry.verify()[0].ok  # what was published is untouched
    finally:
        registry.close()


@pytest.mark.slow
@pytest.mark.s3
def test_a_server_answers_503_naming_a_store_it_cannot_reach(
    own_s3: tuple[str, subprocess.Popen[bytes]], tmp_path: Path, real_base: BaseModelInfo
) -> None:
    """Items 17 and 18 over HTTP: a first request for an adapter whose files sit in a frozen
    or dead store is a 503 naming the store, within the bound; others are still served. Then
    item 20: the database damaged under the server is a 503 naming it."""
    endpoint, proc = own_s3
    settings = _s3_settings(endpoint, tmp_path / "publisher")
    publisher = open_registry(settings)
    bases = BaseModels(tmp_path / "publisher" / "bases")
    base = bases.get(str(real_base.path))
    for seed, name in enumerate(("math", "sql"), start=1):
        publisher.publish(make_lora(base, tmp_path / name, seed), name, base)
    publisher.close()
    replica = {"home": tmp_path / "server", "database_url": settings.registry_url}
    server = ServerSettings(
        **settings.model_dump() | replica | {"base": str(real_base.path), "engine": "hf"}
    )
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    with TestClient(create_app(server)) as http:

        def ask(model: str) -> tuple[int, str, float]:
            started = time.monotonic()
            answer = http.post("/v1/chat/completions", json={**body, "model": model})
            message = answer.json().get("error", {}).get("message", "")
            return answer.status_code, message, time.monotonic() - started

        proc.send_signal(signal.SIGSTOP)
        status, message, seconds = ask("math")
        assert status == 503 and f"the object store {settings.blob_url}" in message, message
        assert seconds < BOUND_S
        assert ask("base")[0] == 200  # the base needs no store
        proc.send_signal(signal.SIGCONT)
        assert ask("math")[0] == 200  # thawed: served, nothing lost
        proc.kill()
        status, message, seconds = ask("sql")
        assert status == 503 and settings.blob_url in message and seconds < BOUND_S, message
        assert ask("math")[0] == 200  # its files are on this machine already

        # Item 20 under a running server: its database overwritten is a 503 saying so.
        _damage(tmp_path / "publisher" / "registry.db", "overwritten")
        status, message, _ = ask("math")
        assert status == 503 and "registry.db is damaged" in message, message


def _damage(path: Path, how: str) -> None:
    if how == "overwritten":
        path.write_bytes(os.urandom(8192))
    else:  # cut short: the first page stays, the tables' pages are gone
        with path.open("r+b") as f:
            f.truncate(1024)


@pytest.mark.parametrize("how", ["overwritten", "truncated"])
def test_a_damaged_database_is_one_line_naming_the_file(
    how: str, home: Path, tiny_base: BaseModelInfo, lora_dir: Path
) -> None:
    """Item 20: a damaged registry.db printed a 156-line traceback (`serve`: exit 3 and a
    traceback). Every command, `serve` included, says in one line which file is damaged and
    what to do, and exits 4 (`--json`: the error object)."""
    registry = Registry(RegistrySettings(home=home).registry_url, home)
    registry.publish(lora_dir, "legal", tiny_base)
    registry.close()
    database = home / "registry.db"
    _damage(database, how)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SWITCHBOARD, "--home", str(home), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        )

    commands = [
        ("registry", "list"),
        ("registry", "show", "legal"),
        ("registry", "verify"),
        ("route", "list"),
        ("experiment", "list"),
        ("serve", "--base", str(tiny_base.path), "--port", "1"),
    ]
    for args in commands:
        result = run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 4, (args, result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr, (args, result.stderr)
        assert f"the registry database {database} is damaged" in lines[0], lines
        assert "restore it from a backup" in lines[0]
    answer = run("registry", "list", "--json")
    assert answer.returncode == 4
    assert json.loads(answer.stdout)["error"]["code"] == "database_unusable"
