"""Bad blob-store settings are refused with the reason, before anything is stored."""

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
