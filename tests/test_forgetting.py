"""The forgetting report, end to end on the real base with a tiny budget: one command, every
method, and the properties the report exists to show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import ROOT

pytestmark = pytest.mark.slow


def test_forgetting_report_runs_every_method_and_isolation_keeps_the_base(
    real_base: object, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    command = [sys.executable, "-m", "bench.forgetting", "--steps", "2"]
    command += ["--domains", "math,sql", "--eval-rows", "4", "--general-rows", "4"]
    command += ["--questions", "6", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "forgetting.json").read_text())
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    methods = {m["method"]: m for m in report["methods"]}
    assert list(methods) == ["full", "replay", "ewc", "l2sp", "switchboard"]
    assert "| Switchboard (LoRA per domain + router) |" in result.stdout
    base = report["base"]

    for name, m in methods.items():
        assert [list(s["domain_loss"]) for s in m["stages"]] == [["math"], ["math", "sql"]]
        just_after, final = m["stages"][0]["domain_loss"]["math"], m["final"]["domain_loss"]["math"]
        assert m["bwt"] == pytest.approx(just_after - final)
        assert 0 <= m["final"]["knowledge_accuracy"] <= 1
        assert m["train_seconds"] > 0
        assert just_after < base["domain_loss"]["math"]  # every method learns the domain
        if name != "switchboard":  # the whole base is trained, and it moves
            assert m["trainable_parameters"] == 134_515_008
            assert m["final"]["general_perplexity"] != pytest.approx(base["general_perplexity"])

    switchboard = methods["switchboard"]
    assert switchboard["trainable_parameters"] < 0.05 * 134_515_008
    routes = switchboard["final"]["routes"]
    assert routes["general"] == {"base": 4}  # general text goes to the untouched base ...
    assert switchboard["final"]["general_perplexity"] == pytest.approx(
        base["general_perplexity"], rel=1e-6
    )  # ... so its perplexity is the base's
    if routes["math"] == {"math": 4}:  # an adapter nobody retrains cannot forget
        assert switchboard["bwt"] == pytest.approx(0.0, abs=1e-9)
    assert routes["sql"].get("sql", 0) >= 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--methods", "full,nope"], "methods must be among full, replay, ewc, l2sp, switchboard"),
        (["--domains", "math,nope"], "for: ['nope']"),
        (["--domains", "math,math"], "at least two domains, each once"),
        (["--steps", "0"], "steps must be >= 1"),
    ],
)
def test_bad_options_are_refused_with_the_reason(options: list[str], message: str) -> None:
    command = [sys.executable, "-m", "bench.forgetting", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
