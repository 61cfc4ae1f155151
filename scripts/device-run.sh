#!/usr/bin/env bash
# Runs on the lent GPU machine, over what scripts/device-stage.sh staged (carried as
# .device-stage): install the wheels beside the image's packages, run the tests marked
# `gpu`, then `bench.gpu --json` at both shapes. Everything lands under $OUT (the run's
# output folder): JSON documents, logs, and what the machine is. Each step has its own time
# limit, so that one that hangs leaves the others their time (about 7 minutes in all).
# BENCH_ARGS adds options to bench.gpu (a rehearsal on a CPU: "--tokens 4 --prompts 2").
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:?set OUT to the output folder}"
python="$(command -v python3 || command -v python)"
site="$(mktemp -d)/site"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    "$python" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} > "$out/machine.txt" 2>&1

"$python" -m pip install --quiet --no-index --no-deps --target "$site" .device-stage/wheels/*.whl \
    > "$out/install.log" 2>&1 || { echo "install failed: see install.log"; exit 1; }
export PYTHONPATH="$site:$PWD"  # switchboard_lora from its wheel; bench, support, tests from here
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

gpu_tests=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
timeout 120 "$python" -m pytest -m gpu -p no:cacheprovider -q $gpu_tests > "$out/gpu-tests.log" 2>&1
echo "gpu tests: exit $? ($(tail -1 "$out/gpu-tests.log"))"

for run in smollm2-135m:100 llama-3-8b:200; do
    shape="${run%%:*}" seconds="${run##*:}"
    # shellcheck disable=SC2086
    timeout "$seconds" "$python" -m bench.gpu --shape "$shape" --json ${BENCH_ARGS:-} \
        > "$out/bench-gpu-$shape.json" 2> "$out/bench-gpu-$shape.log"
    echo "bench.gpu $shape: exit $?"
    grep -A20 "^system" "$out/bench-gpu-$shape.log" || tail -5 "$out/bench-gpu-$shape.log"
done
