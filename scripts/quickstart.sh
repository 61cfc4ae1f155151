#!/usr/bin/env bash
# From nothing: install, pull the base model, train and publish a small `math` adapter on the
# committed demo data, list the registry, route two requests.
# State lives under $SWITCHBOARD_HOME (~/.switchboard).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
sb=.venv/bin/switchboard
$sb base pull
# A small budget (about 1.5 minutes here); drop --max-steps for the full epoch (about 4).
$sb train math --data data/math/train.jsonl --eval-data data/math/eval.jsonl \
    --max-steps 12 --publish
$sb registry versions math
$sb registry verify
$sb route "a train travels 300 km in 4 hours . what is its average speed ?"
$sb route "Which films did Alfred Hitchcock direct?"
