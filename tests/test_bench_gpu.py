"""`python -m bench.gpu` end to end on the CPU at SmolLM2-135M's shape: every system side by
side, exactly --tokens per request, one JSON document on stdout (logs, vLLM's too, on stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.paths import ROOT


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_gpu_runs_every_system_at_a_small_shape_and_prints_one_json_document() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    command = [sys.executable, "-m", "bench.gpu", "--shape", "smollm2-135m", "--tokens", "8"]
    command += ["--prompts", "4", "--bandwidth-gbs", "100", "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # nothing else reached stdout
    assert "vllm" in done.stderr and "switchboard-hf" in done.stderr  # logs and table: stderr
    assert doc["parameters"] == 134_515_008  # SmolLM2-135M's own count, from the shape alone
    assert doc["concurrency"] == [32, 128] and doc["dtype"] == "bfloat16"
    assert set(doc["systems"]) == {"switchboard-hf", "peft", "vllm", "limit"}
    for system in ("switchboard-hf", "peft", "vllm"):
        for level in ("32", "128"):
            result = doc["systems"][system][level]
            for kind in ("base", "mixed"):
                run = result[kind]
                assert run["requests"] == 4 and run["tokens_per_request"] == [8], (system, run)
                assert run["tokens_per_s"] > 0 and run["ttft_p50_s"] > 0
            assert result["mixed_vs_base"] > 0
    for level in ("32", "128"):
        limit = doc["systems"]["limit"][level]
        # Four rows read 134 M bf16 weights a step at 100 GB/s: ~1.5 k tokens/s at most;
        # mixed also reads the 8 adapters' 4.6 M parameters each.
        assert 1000 < limit["base"]["tokens_per_s"] < 2000
        assert 0.7 < limit["mixed_vs_base"] < 0.8
