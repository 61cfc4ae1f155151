"""The `switchboard` command as scripts use it: --json output, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SWITCHBOARD = str(Path(sys.executable).with_name("switchboard"))


class Cli:
    def __init__(self, home: Path, base: Path) -> None:
        self.home, self.base = home, base

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [SWITCHBOARD, "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.home)},
        )
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.run(*args, "--json", code=code).stdout)


@pytest.fixture
def cli(home: Path, tiny_base_dir: Path) -> Cli:
    return Cli(home, tiny_base_dir)


def test_registry_commands_end_to_end(
    cli: Cli, lora_dir: Path, lora_dir_2: Path, tmp_path: Path
) -> None:
    base = ("--base", str(cli.base))
    first = cli.json("registry", "publish", str(lora_dir), "--name", "legal", *base)
    assert {"name": "legal", "version": 1, "ref": "legal:1"}.items() <= first.items()
    second = cli.json(
        "registry", "publish", str(lora_dir_2), "--name", "legal", "--parent", "legal:1", *base
    )
    assert second["ref"] == "legal:2"

    assert cli.json("registry", "list") == [
        {"name": "legal", "versions": 2, "latest": 2, "aliases": {}}
    ]
    alias = cli.json("registry", "alias", "set", "legal", "prod", "1")
    assert alias == {"name": "legal", "alias": "prod", "version": 1, "ref": "legal:1"}
    shown = cli.json("registry", "show", "legal")
    assert shown["ref"] == "legal:1" and shown["aliases"] == ["prod"]
    assert shown["files"]["adapter_model.safetensors"]["sha256"]
    versions = cli.json("registry", "versions", "legal")
    assert [(v["ref"], v["parent"]) for v in versions] == [
        ("legal:1", None),
        ("legal:2", "legal:1"),
    ]

    # Deleting an aliased version is refused (exit 5), then allowed once the alias is gone.
    refused = cli.json("registry", "delete", "legal:1", code=5)
    assert refused["error"]["code"] == "conflict"
    cli.json("registry", "alias", "rm", "legal", "prod")
    assert cli.json("registry", "delete", "legal:1")["deleted"] is True
    assert [v["ref"] for v in cli.json("registry", "versions", "legal", "--all")] == [
        "legal:1",
        "legal:2",
    ]

    out = tmp_path / "exported"
    exported = cli.json("registry", "export", "legal:2", str(out))
    assert "adapter_model.safetensors" in exported["files"]
    assert (out / "switchboard_manifest.json").is_file()

    report = cli.json("registry", "verify")
    assert report["ok"] is True and report["checked"] == 1
    assert cli.json("registry", "gc", "--min-age", "0")["removed"] == 0  # all referenced
    human = cli.run("registry", "list").stdout
    assert "legal" in human


def test_verify_exits_non_zero_on_corruption(cli: Cli, lora_dir: Path) -> None:
    manifest = cli.json(
        "registry", "publish", str(lora_dir), "--name", "x", "--base", str(cli.base)
    )
    shown = cli.json("registry", "show", manifest["ref"])
    sha = shown["files"]["adapter_model.safetensors"]["sha256"]
    (cli.home / "blobs" / "sha256" / sha[:2] / sha).unlink()
    report = cli.json("registry", "verify", code=1)
    assert report["ok"] is False
    assert report["versions"][0]["problems"] == ["adapter_model.safetensors: missing"]
    assert "missing" in cli.run("registry", "verify", code=1).stderr


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (("registry", "show", "nope"), 3, "not_found"),
        (("registry", "show", "Bad Name"), 1, "invalid_name"),
        (("registry", "versions", "nope"), 3, "not_found"),
        (("registry", "alias", "rm", "nope", "prod"), 3, "not_found"),
    ],
)
def test_errors_are_clear_and_coded(cli: Cli, args: tuple[str, ...], code: int, error: str) -> None:
    result = cli.run(*args, "--json", code=code)
    assert json.loads(result.stdout)["error"]["code"] == error
    assert result.stderr.startswith("error: ")


def test_publish_of_a_foreign_adapter_names_the_problem(cli: Cli, foreign_lora_dir: Path) -> None:
    result = cli.run(
        "registry", "publish", str(foreign_lora_dir), "--name", "x", "--base", str(cli.base), code=6
    )
    assert "does not fit base" in result.stderr and "maps" in result.stderr


def test_registry_import_stays_light() -> None:
    """`registry` and the CLI entry point must not import torch (fast --help, light servers)."""
    code = (
        "import sys, switchboard, registry; from registry import Registry, BaseModels; "
        "import registry.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'sentence_transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
