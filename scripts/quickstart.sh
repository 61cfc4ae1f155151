#!/usr/bin/env bash
# From nothing: install into .venv, then `switchboard demo`: pull the base model, train and
# publish an adapter for each demo domain, serve them in process and send mixed requests with
# model=auto. Arguments go to the demo (`--quick`: tiny budgets). A second run reuses what the
# first made. State lives under $SWITCHBOARD_HOME (~/.switchboard).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/switchboard demo "$@"
