"""The `switchboard` command as scripts use it: --json output, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.paths import SWITCHBOARD


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
        "import sys, registry; from registry import Registry, BaseModels; "
        "import switchboard_lora.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'sentence_transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_route_commands_as_scripts_use_them(
    cli: Cli, lora_dir: Path, lora_dir_2: Path, tmp_path: Path
) -> None:
    from switchboard_lora.trainer.data import load_jsonl
    from switchboard_lora.trainer.loop import routing_sample

    data = Path(__file__).resolve().parents[1] / "data"

    def sample(domain: str, split: str, n: int) -> list[str]:
        return routing_sample(load_jsonl(data / domain / f"{split}.jsonl").examples, n, seed=1)

    def jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    for name, source in (("math", lora_dir), ("sql", lora_dir_2)):
        cli.run("registry", "publish", str(source), "--name", name, "--base", str(cli.base))
        examples = jsonl(
            tmp_path / f"{name}.jsonl", [{"text": t} for t in sample(name, "train", 20)]
        )
        added = cli.json("route", "add-examples", name, str(examples))
        assert added == {"route": name, "added": 20, "duplicates": 0, "waiting": False}
    again = cli.json("route", "add-examples", "math", str(tmp_path / "math.jsonl"))
    assert again["added"] == 0 and again["duplicates"] == 20

    # Malformed lines: a clear error, exit 1, and nothing added.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    error = cli.json("route", "add-examples", "math", str(broken), code=1)["error"]
    assert error["code"] == "invalid_input" and "line 2" in error["message"]
    assert len(cli.json("route", "examples", "math")) == 20

    decision = cli.json("route", sample("sql", "eval", 1)[0])
    assert decision["decision"] == "adapter" and decision["adapters"][0]["ref"] == "sql:1"
    assert set(decision["scores"]) == {"math", "sql"}
    assert cli.json("route", "anything", "--model", "math:1")["reason"] == "explicit ref"

    test = jsonl(
        tmp_path / "test.jsonl",
        [{"text": t, "expected": d} for d in ("math", "sql") for t in sample(d, "eval", 5)],
    )
    plot = tmp_path / "confusion.png"
    report = cli.json("route", "eval", "--data", str(test), "--plot", str(plot))
    assert set(report) == {
        "accuracy",
        "in_domain_accuracy",
        "fallback_recall",
        "false_fallback_rate",
        "n",
        "confusion",
    }
    assert report["n"] == 10 and report["fallback_recall"] is None
    assert sum(sum(row.values()) for row in report["confusion"].values()) == 10
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    routes = jsonl(
        tmp_path / "routes.jsonl",
        [{"name": "sql", "text": t} for t in sample("sql", "train", 10)]
        + [{"name": "base", "text": "What is the weather in Rome?"}],
    )
    # The test file expects `math`, which the routes file gives no examples: refused.
    error = cli.json("route", "eval", "--data", str(test), "--routes", str(routes), code=1)
    assert "math, which have no examples" in error["error"]["message"]
    sql_only = jsonl(tmp_path / "sql-test.jsonl", [{"text": "List all users.", "expected": "sql"}])
    from_file = cli.json("route", "eval", "--data", str(sql_only), "--routes", str(routes))
    assert from_file["n"] == 1 and set(from_file["confusion"]) == {"sql"}

    calibrated = cli.json("route", "calibrate", "--data", str(test))
    assert calibrated["stored"] and set(calibrated["thresholds"]) <= {"math", "sql"}
    listed = {r["route"]: r for r in cli.json("route", "list")}
    assert listed["math"]["added_examples"] == 20 and listed["math"]["ref"] == "math:1"
    for route, fitted in calibrated["thresholds"].items():
        assert listed[route]["threshold"] == fitted["threshold"]

    usage = cli.run("route", "remove-examples", "math", code=2)
    assert "--id" in usage.stderr and "--all" in usage.stderr
    assert cli.json("route", "remove-examples", "math", "--all")["removed"] == 20
    error = cli.json("route", "", code=1)["error"]
    assert error["code"] == "invalid_input" and "empty" in error["message"]


def test_experiment_commands(
    cli: Cli, lora_dir: Path, lora_dir_2: Path, tmp_path: Path, home: Path
) -> None:
    from switchboard_lora.registry import Registry, RegistrySettings

    base = ("--base", str(cli.base))
    for source in (lora_dir, lora_dir_2):
        cli.json("registry", "publish", str(source), "--name", "legal", *base)
    arms = ("--arm", "legal:1=0.9", "--arm", "legal:2=0.1")
    made = cli.json(
        "experiment", "create", "trial", "--adapter", "legal", *arms, "--key", "header:X-User-Id"
    )
    assert made["arms"] == [{"ref": "legal:1", "share": 0.9}, {"ref": "legal:2", "share": 0.1}]
    assert made["key"] == "header:x-user-id" and made["running"]
    bad = cli.run(
        "experiment",
        "create",
        "t2",
        "--adapter",
        "legal",
        "--arm",
        "legal:1",
        "--arm",
        "legal:2=1",
        code=1,
    )
    assert "--arm must look like legal:3=0.9, not 'legal:1'" in bad.stderr
    cli.run("experiment", "create", "t3", "--adapter", "legal", *arms, code=5)  # one at a time

    registry = Registry(RegistrySettings(home=home).registry_url, home)
    experiment = registry.experiments.get("trial")
    for i in range(40):
        arm = experiment.arms[i % 2]
        registry.experiments.record(f"r{i}", experiment, arm, 0.1 + i / 100, 10, 5)
        registry.experiments.feedback(f"r{i}", thumbs_up=(i % 2 == 1) or i % 5 == 0)
    registry.close()

    plot = tmp_path / "trial.png"
    results = cli.json("experiment", "results", "trial", "--plot", str(plot))
    assert [a["ref"] for a in results["arms"]] == ["legal:1", "legal:2"]
    assert {"ref", "share", "requests", "feedback", "up_rate", "mean_score"} <= set(
        results["arms"][0]
    )
    assert results["arms"][1]["up_rate"] == 1.0 and results["arms"][0]["requests"] == 20
    assert results["verdict"].startswith("legal:2 better at p < 0.05")
    assert plot.read_bytes().startswith(b"\x89PNG")
    human = cli.run("experiment", "results", "trial").stdout
    assert "verdict: legal:2 better" in human

    assert cli.json("experiment", "promote", "trial", "legal:2")["outcome"] == "promoted legal:2"
    assert cli.json("registry", "show", "legal")["ref"] == "legal:2"
    cli.run("experiment", "stop", "trial", code=5)  # already ended
    cli.run("experiment", "results", "nope", code=3)
    assert [e["name"] for e in cli.json("experiment", "list")] == ["trial"]
