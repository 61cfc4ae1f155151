#!/usr/bin/env bash
# From nothing: install, pull the default base model, publish an adapter, list the registry.
# Everything lands under $SWITCHBOARD_HOME (default ~/.switchboard); a second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
sb=.venv/bin/switchboard
$sb base pull
# Until the trainer lands, the example adapter is a fresh (untrained) LoRA made with PEFT.
example="$(mktemp -d)/example-lora"
.venv/bin/python scripts/example_adapter.py "$example"
$sb registry publish "$example" --name example
$sb registry versions example
$sb registry verify
