"""Training real adapters on the real base: publish, reload with plain PEFT, same outputs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support.paths import DATA, SWITCHBOARD
from switchboard_lora.registry import MANIFEST_FILE, BaseModelInfo, Registry, SwitchboardError
from switchboard_lora.registry.tensors import fingerprint_tensors
from switchboard_lora.trainer.config import TrainConfig
from switchboard_lora.trainer.data import Dataset, load_jsonl
from switchboard_lora.trainer.loop import train_adapter
from switchboard_lora.trainer.peft_setup import assert_frozen

pytestmark = pytest.mark.slow


def _subset(path: Path, n: int) -> Dataset:
    full = load_jsonl(path)
    return Dataset(full.path, full.format, full.examples[:n], ())


# Tiny budgets: a few steps of short sequences keep each training run to seconds.
FAST = {"batch_size": 4, "max_length": 128, "max_eval_examples": 8, "max_general_examples": 4}


@pytest.fixture(scope="module")
def math_small() -> tuple[Dataset, Dataset, Dataset]:
    return (
        _subset(DATA / "math" / "train.jsonl", 24),
        _subset(DATA / "math" / "eval.jsonl", 8),
        _subset(DATA / "general" / "eval.jsonl", 4),
    )


def _outputs(model: Any, tokenizer: Any) -> Any:
    import torch

    inputs = tokenizer(
        ["what is 12 percent of 50 ?", "select the names"], return_tensors="pt", padding=True
    )
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_train_publish_reload_gives_the_same_outputs(
    real_base: BaseModelInfo,
    math_small: tuple[Dataset, Dataset, Dataset],
    tmp_path: Path,
    method: str,
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train, held, general = math_small
    config = TrainConfig(method=method, max_steps=4, routing_examples=10, **FAST)  # type: ignore[arg-type]
    result = train_adapter(
        real_base, train, config, tmp_path / "adapter", eval_data=held, general_data=general
    )
    tokenizer = AutoTokenizer.from_pretrained(real_base.path)
    expected = _outputs(result.model, tokenizer)

    assert result.steps == 4 and len(result.history) == 4
    for key in (
        "train_loss",
        "eval_loss_before",
        "eval_loss_after",
        "general_loss_before",
        "general_loss_after",
    ):
        assert result.metrics[key] > 0, key
    assert result.metrics["eval_loss_after"] < result.metrics["eval_loss_before"]

    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "home")
    try:
        manifest = registry.publish(result.adapter_dir, "math", real_base)
        assert manifest.method == method
        assert manifest.data.fingerprint == train.fingerprint and manifest.data.examples == 24
        assert manifest.metrics == pytest.approx(result.metrics)
        assert (
            manifest.hyperparameters["seed"] == 0 and manifest.hyperparameters["method"] == method
        )
        assert len(manifest.routing_examples) == 10 == len(set(manifest.routing_examples))
        assert set(manifest.routing_examples) <= {e.request for e in train.examples}
        _, checkout = registry.checkout("math")
    finally:
        registry.close()

    plain = AutoModelForCausalLM.from_pretrained(real_base.path, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(plain, checkout)
    actual = _outputs(reloaded, tokenizer)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(
        _outputs(plain if method == "prefix" else reloaded.unload(), tokenizer), expected, atol=1e-3
    )


def test_training_is_reproducible_and_leaves_the_base_untouched(
    real_base: BaseModelInfo, math_small: tuple[Dataset, Dataset, Dataset], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    train, held, _ = math_small
    before = fingerprint_tensors(real_base.weight_files)
    runs = {}
    for label, seed in (("a", 7), ("b", 7), ("c", 8)):
        config = TrainConfig(max_steps=2, seed=seed, **FAST)
        result = train_adapter(
            real_base, train, config, tmp_path / label, eval_data=held, progress=False
        )
        runs[label] = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert fingerprint_tensors(real_base.weight_files) == before
    import torch

    for key, tensor in runs["a"].items():
        torch.testing.assert_close(runs["b"][key], tensor, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(runs["c"][k], t) for k, t in runs["a"].items())


def test_a_thawed_base_parameter_is_refused(real_base: BaseModelInfo) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(real_base.path), LoraConfig(target_modules=["q_proj"])
    )
    assert assert_frozen(model) > 0
    next(p for n, p in model.named_parameters() if "embed_tokens" in n).requires_grad_(True)
    with pytest.raises(SwitchboardError, match="base parameters would be trained"):
        assert_frozen(model)


def _cli(home: Path, base: BaseModelInfo, *args: str) -> list[str]:
    return [SWITCHBOARD, "--home", str(home), "train", "math", "--base", str(base.path), *args]


def test_cli_trains_and_publishes_with_json(real_base: BaseModelInfo, tmp_path: Path) -> None:
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(
        "".join((DATA / "math" / "train.jsonl").read_text().splitlines(True)[:20])
    )
    args = [
        "--data",
        str(train_file),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "96",
    ]
    args += ["--general-data", str(DATA / "general" / "eval.jsonl"), "--publish", "--json"]
    first = subprocess.run(
        _cli(tmp_path / "home", real_base, *args), capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["ref"] == "math:1"
    for key in ("train_loss", "eval_loss_before", "eval_loss_after", "seconds"):
        assert isinstance(report[key], float), key
    second = subprocess.run(
        _cli(tmp_path / "home", real_base, *args), capture_output=True, text=True, timeout=600
    )
    assert json.loads(second.stdout)["ref"] == "math:2"
    registry = Registry(f"sqlite:///{tmp_path / 'home' / 'registry.db'}", tmp_path / "home")
    try:
        assert registry.resolve("math:2").parent == "math:1"  # retrained from the previous one
    finally:
        registry.close()


def test_cli_refuses_a_bad_data_file(real_base: BaseModelInfo, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\nnot json\n')
    result = subprocess.run(
        _cli(tmp_path / "home", real_base, "--data", str(bad), "--json"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_input"
    assert (
        "line 2: 'prompt' must be a string" in error["message"]
        and "line 3: not valid JSON" in error["message"]
    )


def test_ctrl_c_stops_cleanly_and_publishes_nothing(
    real_base: BaseModelInfo, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    args = ["--data", str(DATA / "code" / "train.jsonl"), "--publish", "--max-length", "128"]
    proc = subprocess.Popen(
        _cli(home, real_base, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a child inherits an ignored SIGINT (pytest's may be, by then).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: list[str] = []
    printed: list[str] = []  # stdout is drained too: a full pipe would block the process
    readers = [
        threading.Thread(target=lambda s=s, o=o: o.extend(iter(lambda: s.read(64), "")))
        for s, o in ((proc.stderr, seen), (proc.stdout, printed))
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    deadline = time.monotonic() + 300
    while not re.search(r"training: +\d+%", "".join(seen)):  # the progress bar is up
        assert proc.poll() is None, "".join(seen)
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running 300 s after Ctrl-C:\n" + "".join(seen)[-3000:])
    for reader in readers:
        reader.join(timeout=10)
    assert proc.returncode == 130, "".join(seen)
    assert "nothing saved or published" in "".join(seen)
    registry = Registry(f"sqlite:///{home / 'registry.db'}", home)
    try:
        assert registry.list_adapters() == []
    finally:
        registry.close()
    assert not any((home / "runs").iterdir())
    assert not list(home.rglob(MANIFEST_FILE))


def test_prefix_starts_as_real_text_prepended(real_base: BaseModelInfo) -> None:
    import torch
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from switchboard_lora.trainer.peft_setup import init_prefix_from_text

    tokenizer = AutoTokenizer.from_pretrained(real_base.path)
    base = AutoModelForCausalLM.from_pretrained(real_base.path)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)
    prefixed = get_peft_model(AutoModelForCausalLM.from_pretrained(real_base.path), config)
    text = "Solve the following math word problem carefully"
    init_prefix_from_text(prefixed, tokenizer, text)
    inputs = tokenizer("what is 12 percent of 50 ?", add_special_tokens=False, return_tensors="pt")
    text_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:6]])
    with torch.no_grad():
        with_prefix = prefixed(input_ids=inputs.input_ids).logits
        with_text = base(input_ids=torch.cat([text_ids, inputs.input_ids], 1)).logits[:, 6:]
    torch.testing.assert_close(with_prefix, with_text, rtol=0, atol=1e-3)
