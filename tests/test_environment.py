"""Tests, benchmarks and scratch registries never read the operator's SWITCHBOARD_* settings.

The poison: SWITCHBOARD_HOME and SWITCHBOARD_DATABASE_URL pointing into a folder that must
stay empty. The root command does read them (the positive control shows the poison works);
nothing else may.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import ROOT, SWITCHBOARD, package_folders
from switchboard_lora.registry import RegistrySettings
from switchboard_lora.router.settings import RouterSettings
from switchboard_lora.serving.settings import EngineSettings, ServerSettings


def _poisoned(poison: Path) -> dict[str, str]:
    return {
        "SWITCHBOARD_HOME": str(poison / "home"),
        "SWITCHBOARD_DATABASE_URL": f"sqlite:///{poison / 'shared.db'}",
        "switchboard_max_loras": "3",  # pydantic-settings matches names ignoring case
    }


def test_the_root_command_reads_the_environment(tmp_path: Path) -> None:
    """The control: with the poison set, the CLI writes to the 'shared' registry."""
    poison = tmp_path / "poison"
    env = {**os.environ, **_poisoned(poison)}
    result = subprocess.run(
        [SWITCHBOARD, "registry", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (poison / "shared.db").is_file()


def test_plain_settings_ignore_a_poisoned_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchboard_lora.settings import Settings

    for key, value in _poisoned(tmp_path / "poison").items():
        monkeypatch.setenv(key, value)
    assert Settings().database_url == f"sqlite:///{tmp_path / 'poison' / 'shared.db'}"
    assert Settings().max_loras == 3
    for plain in (RegistrySettings(), ServerSettings()):
        assert plain.home == Path("~/.switchboard") and plain.database_url is None
    assert EngineSettings().max_loras == 8 and ServerSettings().max_loras == 8
    assert RouterSettings() == RouterSettings.model_construct()
    home = tmp_path / "scratch"
    assert RegistrySettings(home=home).registry_url == f"sqlite:///{home / 'registry.db'}"


def test_the_forgetting_reports_scratch_registry_stays_in_its_scratch_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluation.forgetting.report import scratch_registry

    poison = tmp_path / "poison"
    for key, value in _poisoned(poison).items():
        monkeypatch.setenv(key, value)
    scratch = tmp_path / "scratch"
    registry, router = scratch_registry(scratch, ROOT / "data")
    try:
        assert [e.route for e in registry.routes.examples()][:1] == ["base"]
        assert router.decide("What is the capital of France?").kind == "base"
    finally:
        registry.close()
    assert (scratch / "registry.db").is_file()
    assert not poison.exists()


# What the demo, forgetting and trainer tests do: run the CLI with only `--home`, in the
# environment the test process has.
_PROBE = """
import os, subprocess, sys
from pathlib import Path

def test_cli_as_the_slow_tests_run_it(tmp_path):
    switchboard = str(Path(sys.executable).with_name("switchboard"))
    command = [switchboard, "--home", str(tmp_path / "home"), "registry", "list", "--json"]
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert (tmp_path / "home" / "registry.db").is_file()
"""


def test_the_test_suite_under_a_poisoned_environment_writes_nothing_there(
    tmp_path: Path,
) -> None:
    """With the poison set, a slice of the suite (the registry contract, the CLI) and a probe
    that runs the CLI as the slow tests do, under this suite's conftest, pass; the poisoned
    place stays empty."""
    poison = tmp_path / "poison"
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(_PROBE)
    env = {**os.environ, **_poisoned(poison), "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest"),
            *("-m", "not slow and not postgres and not s3", "--rootdir", str(ROOT)),
            "tests/test_cli.py::test_registry_commands_end_to_end",
            "tests/test_registry_contract.py::test_publish_records_a_complete_manifest",
            str(probe),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 passed" in result.stdout
    assert not poison.exists()


def test_only_the_root_package_reads_the_environment() -> None:
    """No library package, benchmark or test builds settings from the environment:
    `pydantic_settings` and `switchboard_lora.settings` are imported by the root entry points
    alone: the CLI, and the plugin vLLM loads into `vllm serve` (and by conftest, which
    removes the operator's settings)."""
    allowed = {ROOT / "switchboard" / "settings.py", ROOT / "tests" / "conftest.py"}
    allowed |= set((ROOT / "switchboard" / "cli").glob("*.py"))
    allowed.add(ROOT / "switchboard" / "vllm_plugin.py")
    readers = []
    for folder in (*package_folders(), "bench", "tests", "support", "evaluation"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in allowed or path == Path(__file__):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module in (
                    "pydantic_settings",
                    "switchboard_lora.settings",
                ):
                    readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if _reads_switchboard_variable(node):
                    readers.append(f"{path.relative_to(ROOT)}:{node.lineno} reads SWITCHBOARD_*")
    assert readers == []


def _reads_switchboard_variable(node: ast.AST) -> bool:
    """`os.getenv("SWITCHBOARD_…")`, `os.environ.get("SWITCHBOARD_…")`, `os.environ["…"]`."""
    if isinstance(node, ast.Call):
        func, args = node.func, node.args
    elif isinstance(node, ast.Subscript):
        func, args = node.value, [node.slice]
    else:
        return False
    name = ast.unparse(func)
    if name not in ("os.getenv", "os.environ.get", "os.environ", "environ.get", "getenv"):
        return False
    first = args[0] if args else None
    return isinstance(first, ast.Constant) and str(first.value).upper().startswith("SWITCHBOARD_")
