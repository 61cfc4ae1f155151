"""The router's operator API end to end. The review loop: a real server logs its routing
decisions (SWITCHBOARD_ROUTE_LOG), an operator reviews them over the admin API and the CLI,
labels one, and the next request with that text goes where the label says; bad labels are
refused and change nothing. Route descriptions, set and removed over the admin API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from serving_world import World, chat, requests

from support.paths import SWITCHBOARD
from switchboard_lora.serving.http.app import create_app
from switchboard_lora.serving.settings import ServerSettings

pytestmark = pytest.mark.slow

ADMIN = {"authorization": "Bearer admin-key"}
CLIENT = {"authorization": "Bearer client-key"}


@pytest.fixture(scope="module")
def logging_server(fresh_world: World) -> Iterator[TestClient]:
    settings = ServerSettings(
        home=fresh_world.home,
        base=str(fresh_world.base.path),
        engine="hf",
        route_log="all",
        api_keys=["client-key"],
        admin_keys=["admin-key"],
    )
    with TestClient(create_app(settings), headers=CLIENT) as http:
        yield http


def _cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWITCHBOARD, "--home", str(world.home), "route", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(world.home)},
    )


def _client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="client-key", http_client=http)


def _routed(http: TestClient, text: str) -> dict[str, Any]:
    answer = chat(_client(http), "auto", text, max_tokens=2)
    info: dict[str, Any] = answer.model_extra["switchboard"]
    return info


def test_logged_decisions_are_reviewed_and_labelled_live(
    logging_server: TestClient, fresh_world: World, tmp_path: Path
) -> None:
    http = logging_server
    text = "Tell me about the weather on Mars today."
    before = _routed(http, text)
    sql_request = requests("sql", "eval", 1)[0]
    _routed(http, sql_request)
    chat(_client(http), "math", "What is 2 + 2?", max_tokens=2)  # named: not routed

    assert http.get("/v1/admin/route-decisions").status_code == 403  # a client key
    listed = http.get("/v1/admin/route-decisions", headers=ADMIN).json()["decisions"]
    assert sorted(d["text"] for d in listed) == sorted([text, sql_request])
    margins = [d["margin"] for d in listed]
    assert margins == sorted(margins)  # most uncertain first
    logged = next(d for d in listed if d["text"] == text)
    assert logged["route"] == before["route"] and logged["in_domain"] == before["in_domain"]
    assert logged["margin"] == before["margin"] and logged["label"] is None
    uncertain = http.get("/v1/admin/route-decisions?uncertain=true", headers=ADMIN).json()
    assert all(d["margin"] < 0.2 for d in uncertain["decisions"])

    # The CLI sees the same log.
    reviewed = _cli(fresh_world, "review", "--json")
    assert reviewed.returncode == 0, reviewed.stderr
    assert [d["id"] for d in json.loads(reviewed.stdout)] == [d["id"] for d in listed]

    # Bad labels: an unknown route, an unknown decision, a malformed id; nothing changes.
    label = f"/v1/admin/route-decisions/{logged['id']}/label"
    unknown_route = http.post(label, json={"route": "astrology"}, headers=ADMIN)
    assert unknown_route.status_code == 404
    assert "no route named 'astrology'" in unknown_route.json()["error"]["message"]
    missing = http.post(
        "/v1/admin/route-decisions/999999/label", json={"route": "sql"}, headers=ADMIN
    )
    assert missing.status_code == 404 and "999999" in missing.json()["error"]["message"]
    malformed = http.post("/v1/admin/route-decisions/x/label", json={"route": "sql"}, headers=ADMIN)
    assert malformed.status_code == 400
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps({"id": logged["id"], "route": "sql"}) + "\n"
        + json.dumps({"id": 999999, "route": "sql"}) + "\n"
        + json.dumps({"id": "one", "route": "sql"}) + "\n"
    )  # fmt: skip
    refused = _cli(fresh_world, "label", "--file", str(labels))
    assert refused.returncode == 1 and "line 3" in refused.stderr, refused.stderr
    labels.write_text(
        json.dumps({"id": logged["id"], "route": "sql"}) + "\n"
        + json.dumps({"id": 999999, "route": "sql"}) + "\n"
    )  # fmt: skip
    refused = _cli(fresh_world, "label", "--file", str(labels))
    assert refused.returncode == 1 and "none applied" in refused.stderr, refused.stderr
    assert _routed(http, text)["route"] == before["route"]  # nothing was applied

    # A label turns the request into an example of its route: the next decision follows it.
    target = "sql" if before["route"] == "base" else "base"
    done = http.post(label, json={"route": target}, headers=ADMIN)
    assert done.status_code == 200 and done.json()["label"] == target
    assert _routed(http, text)["route"] == target
    examples = http.get(f"/v1/admin/routes/{target}/examples", headers=ADMIN).json()["examples"]
    assert text in [e["text"] for e in examples]
    queue = http.get("/v1/admin/route-decisions", headers=ADMIN).json()["decisions"]
    assert logged["id"] not in [d["id"] for d in queue]  # reviewed: out of the queue
    everything = http.get("/v1/admin/route-decisions?labelled=true", headers=ADMIN).json()
    assert [d["label"] for d in everything["decisions"] if d["id"] == logged["id"]] == [target]


def test_route_descriptions_over_the_admin_api(logging_server: TestClient) -> None:
    http = logging_server
    path = "/v1/admin/routes/sql/description"
    body = {"description": "Writing SQL queries against database tables."}
    assert http.put(path, json=body).status_code == 403  # a client key
    assert http.put(path, json=body, headers=ADMIN).json() == {"route": "sql", **body}
    for bad_path, bad_body in (
        ("/v1/admin/routes/base/description", body),  # base takes examples
        (path, {"description": ""}),
        (path, {"description": "x", "weight": 2}),
    ):
        assert http.put(bad_path, json=bad_body, headers=ADMIN).status_code == 400, bad_body
    removed = http.delete(path, headers=ADMIN)
    assert removed.json() == {"route": "sql", "description": None}
