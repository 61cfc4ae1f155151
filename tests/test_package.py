"""The distribution installs beside others: its wheel holds one import package,
`switchboard_lora`, so PyPI's `trainer` (Coqui's, installed with Coqui TTS) and Switchboard's
trainer live in one environment, and every module of the design card's folders ships."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from support.paths import ROOT, package_folders


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, ROOT)
    (built,) = out.glob("switchboard_lora-*.whl")
    return built


def test_the_wheel_holds_one_import_package_with_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"switchboard_lora"}
    folders = package_folders()
    assert set(folders) == {"switchboard", "registry", "router", "trainer", "serving"}
    for folder, inside in folders.items():
        for module in (ROOT / folder).rglob("*.py"):
            shipped = Path("switchboard_lora", inside, module.relative_to(ROOT / folder))
            assert shipped.as_posix() in names, module
    assert "switchboard_lora/py.typed" in names
    assert "switchboard_lora/registry/migrations/script.py.mako" in names
    metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "switchboard = switchboard_lora.cli:main" in entry_points
    assert "switchboard = switchboard_lora.vllm_plugin:register" in entry_points


def test_it_installs_and_imports_beside_pypis_trainer(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv with the wheel and PyPI's `trainer` (both `--no-deps`; Switchboard's own
    requirements come from this environment through a path file, after the venv's own)."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run(python, "-c", purelib).strip())
    (site / "zz-requirements.pth").write_text(sysconfig.get_path("purelib") + "\n")
    downloads = tmp_path / "downloads"
    coqui_trainer = "trainer==0.0.36"
    _run(python, "-m", "pip", "download", "--no-deps", "--quiet", "-d", downloads, coqui_trainer)
    (coqui,) = downloads.glob("trainer-*.whl")
    _run(python, "-m", "pip", "install", "--no-deps", "--quiet", wheel, coqui)

    probe = (
        "import importlib.util as u, pathlib, sys\n"
        "coqui = u.find_spec('trainer')\n"
        "print((pathlib.Path(coqui.origin).parent / 'VERSION').read_text().strip())\n"
        "from switchboard_lora.trainer.config import TrainConfig\n"
        "from switchboard_lora.registry import Registry\n"
        "import switchboard_lora.serving.http.app\n"
        "package = pathlib.Path(sys.modules['switchboard_lora'].__file__).parent\n"
        "print(TrainConfig.__module__, package)\n"
    )
    lines = _run(python, "-c", probe, cwd=tmp_path).split("\n")
    assert lines[0] == "v0.0.36"  # `import trainer` finds Coqui's (its VERSION file)
    module, package = lines[1].split()
    assert module == "switchboard_lora.trainer.config"
    assert Path(package).parent == site  # the wheel's copy, not this checkout's
    assert "serve" in _run(venv / "bin" / "switchboard", "--help")
