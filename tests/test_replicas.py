"""Two replicas, one registry: two `switchboard serve` processes with homes (and caches) of
their own share one PostgreSQL database and one S3 bucket; a third process publishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import _postgres_schema_url, make_bucket, s3_options

from support.paths import SWITCHBOARD
from support.processes import ServerProcess, switchboard_server
from switchboard_lora.registry import BaseModelInfo
from switchboard_lora.trainer.synthetic import random_adapter

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.s3]


@pytest.fixture
def shared(s3_endpoint: str) -> Iterator[dict[str, str]]:
    """The environment every process of the deployment gets: one database, one bucket."""
    for url in _postgres_schema_url():
        yield {
            "PATH": os.environ["PATH"],
            "HF_HUB_OFFLINE": "1",
            "SWITCHBOARD_DATABASE_URL": url,
            "SWITCHBOARD_BLOB_URL": f"s3://{make_bucket(s3_endpoint)}/registry",
            "SWITCHBOARD_BLOB_OPTIONS": json.dumps(s3_options(s3_endpoint)),
        }


def _cli(env: dict[str, str], home: Path, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [SWITCHBOARD, "--home", str(home), *args, "--json"],
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def _replica(env: dict[str, str], home: Path, base: BaseModelInfo) -> ServerProcess:
    """`switchboard serve` (transformers engine) with a home of its own."""
    log = home.parent / f"{home.name}.log"
    return switchboard_server(home, base.path, log, "--engine", "hf", env=env)


def _ask(replica: ServerProcess, model: str, user: str | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"x-user": user} if user else {}
    return httpx.post(f"{replica.url}/v1/chat/completions", json=body, headers=headers, timeout=300)


def test_two_replicas_share_one_registry(
    shared: dict[str, str], real_base: BaseModelInfo, tmp_path: Path
) -> None:
    publisher = tmp_path / "publisher"

    def publish(seed: int) -> str:
        adapter = random_adapter(real_base.path, tmp_path / f"lora{seed}", seed=seed, scale=0.05)
        done = _cli(
            shared,
            publisher,
            "registry",
            "publish",
            str(adapter),
            "--name",
            "legal",
            "--base",
            str(real_base.path),
        )
        return str(done["ref"])

    assert publish(1) == "legal:1"
    homes = [tmp_path / f"replica{i}" for i in (1, 2)]
    replicas = [_replica(shared, home, real_base) for home in homes]
    try:
        for replica in replicas:
            replica.wait_ready("/readyz", 300)
        for replica in replicas:  # published elsewhere, served here: files from the bucket
            answer = _ask(replica, "legal")
            assert answer.status_code == 200, answer.text
            assert answer.json()["switchboard"]["served"]["ref"] == "legal:1"
        assert publish(2) == "legal:2"
        for replica in replicas:  # published while both run: served on the next request
            assert _ask(replica, "legal:2").json()["switchboard"]["served"]["ref"] == "legal:2"
        for home in homes:  # each downloaded into its own cache
            assert (
                len([p for p in (home / "checkouts").iterdir() if p.name.startswith("legal-v")])
                == 2
            )

        _cli(
            shared,
            publisher,
            "experiment",
            "create",
            "legal-ab",
            "--adapter",
            "legal",
            "--arm",
            "legal:1=0.5",
            "--arm",
            "legal:2=0.5",
            "--key",
            "header:x-user",
        )
        time.sleep(1.5)  # replicas re-read running experiments once a second
        arms: dict[str, set[str]] = {}
        ids = []
        for user in [f"user{i}" for i in range(8)]:
            for replica in replicas:
                answer = _ask(replica, "legal", user)
                assert answer.status_code == 200, answer.text
                served = answer.json()["switchboard"]
                arms.setdefault(user, set()).add(served["experiment"]["arm"])
                ids.append(answer.json()["id"])
        assert all(len(a) == 1 for a in arms.values())  # a user keeps their arm on both
        # Feedback on replica 2 for an answer replica 1 gave: one experiment, one record.
        feedback = httpx.post(f"{replicas[1].url}/v1/feedback", json={"id": ids[0], "thumbs": "up"})
        assert feedback.status_code == 200, feedback.text
        results = _cli(shared, publisher, "experiment", "results", "legal-ab")
        per_arm = {a["ref"]: a["requests"] for a in results["arms"]}  # type: ignore[index, union-attr]
        assert sum(per_arm.values()) == 16
        assert sum(a["feedback"] for a in results["arms"]) == 1  # type: ignore[index, union-attr]

        # One replica loses its local cache: it keeps serving, and a version it has not seen
        # costs it one download into a fresh cache.
        shutil.rmtree(homes[0] / "checkouts")
        assert _ask(replicas[0], "legal:1").status_code == 200
        assert publish(3) == "legal:3"
        answer = _ask(replicas[0], "legal:3")
        assert answer.status_code == 200, answer.text
        assert answer.json()["switchboard"]["served"]["ref"] == "legal:3"
        fresh = [p.name for p in (homes[0] / "checkouts").iterdir() if p.name.startswith("legal-v")]
        assert fresh == [answer.json()["switchboard"]["served"]["served_name"]]
    finally:
        for replica in replicas:
            replica.stop()
