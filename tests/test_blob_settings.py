# ruff: noqa: E501  (the table of bad settings reads best as one row per case)
"""Bad settings (the blob store's and every other) are refused in one line with the reason,
before anything is stored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.paths import SWITCHBOARD
from switchboard_lora.registry import ErrorCode, SwitchboardError
from switchboard_lora.registry.blobs import open_blob_store
from switchboard_lora.registry.blobs.local import LocalBlobStore


@pytest.mark.parametrize(
    ("url", "options", "reason"),
    [
        ("ftp://host/x", {}, "use s3://BUCKET[/PREFIX] or file:///PATH"),
        ("s3://", {}, "use s3://BUCKET[/PREFIX] or file:///PATH"),
        ("s3://bucket/p", {"aws_no_such_key": "1"}, "'aws_no_such_key' is not valid"),
        ("s3://bucket/p", {"aws_allow_http": "true"}, "blob URL s3://bucket/p"),  # obstore panics
        ("s3://bucket/p", {"allow_http": "maybe"}, 'failed to parse "maybe"'),
    ],
)
def test_bad_blob_settings_are_refused_with_the_reason(
    tmp_path: Path, url: str, options: dict[str, str], reason: str
) -> None:
    with pytest.raises(SwitchboardError) as refused:
        open_blob_store(url, tmp_path, options)
    assert refused.value.code == ErrorCode.INVALID_INPUT
    assert reason in refused.value.message


def test_a_file_url_is_a_local_folder(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path / 'elsewhere'}", tmp_path)
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "elsewhere"
    assert open_blob_store(None, tmp_path).root == tmp_path / "blobs"  # type: ignore[attr-defined]


def test_the_cli_refuses_a_bad_blob_url_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SWITCHBOARD_BLOB_URL": "ftp://x/y"}
    result = subprocess.run(
        [SWITCHBOARD, "--home", str(tmp_path), "registry", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "invalid_input"
    assert result.stderr.strip().splitlines() == [
        "error: blob URL 'ftp://x/y': use s3://BUCKET[/PREFIX] or file:///PATH "
        "(default: local files)"
    ]


def test_json_scalars_in_blob_options_are_taken_as_the_clients_text(tmp_path: Path) -> None:
    """Issue 34 item 21: `{"allow_http": true}` (a JSON boolean) was a 46-line traceback."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SWITCHBOARD_BLOB_URL": f"file://{tmp_path / 'blobs'}",
        "SWITCHBOARD_BLOB_OPTIONS": '{"allow_http": true, "timeout": 30}',
    }
    result = subprocess.run(
        [SWITCHBOARD, "--home", str(tmp_path), "registry", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("SWITCHBOARD_MAX_LORAS", "x", "bad setting: SWITCHBOARD_MAX_LORAS='x': Input should be a valid integer"),
        ("SWITCHBOARD_BLOB_TIMEOUT_S", "-1", "bad setting: SWITCHBOARD_BLOB_TIMEOUT_S='-1': Input should be greater than 0"),
        ("SWITCHBOARD_ENGINE", "gpu", "bad setting: SWITCHBOARD_ENGINE='gpu': Input should be 'auto', 'vllm' or 'hf'"),
        ("SWITCHBOARD_OPEN_DOCS", "maybe", "bad setting: SWITCHBOARD_OPEN_DOCS='maybe': Input should be a valid boolean"),
        ("SWITCHBOARD_BLOB_OPTIONS", "[1", "bad setting: SWITCHBOARD_BLOB_OPTIONS is not valid JSON (Expecting ','"),
        ("SWITCHBOARD_API_KEYS", '["secret", 5]', "bad setting: SWITCHBOARD_API_KEYS: Input should be a valid string"),
        ("SWITCHBOARD_DATABASE_URL", "nonsense://", "registry database URL (nonsense://…) is not one SQLAlchemy can use"),
        ("SWITCHBOARD_DATABASE_URL", "postgresql+psycopg://u:secret@h:x/db", "registry database URL (postgresql+psycopg://…) is not one"),
    ],
)  # fmt: skip
def test_every_bad_setting_is_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    """Issue 34: a bad setting was pydantic's screenful (46 lines for one). One line names
    the variable, its value (never a key's) and what is wrong; `--json` gets the error too."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), variable: value}
    for json_flag in ([], ["--json"]):
        result = subprocess.run(
            [SWITCHBOARD, "--home", str(tmp_path), "registry", "list", *json_flag],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith(f"error: {said}"), result.stderr
        assert "secret" not in result.stderr
        if json_flag:
            assert json.loads(result.stdout)["error"]["code"] == "invalid_input"
