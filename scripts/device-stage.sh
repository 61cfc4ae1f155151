#!/usr/bin/env bash
# Stage, here, what the lent GPU machine lacks for `bench.gpu` and the tests marked `gpu`,
# then print the one device command that installs it there and runs them.
#
#   scripts/device-stage.sh            # wheels for that machine's Python 3.12 (manylinux x86_64)
#   STAGE_PYTHON=3.11 scripts/device-stage.sh   # for a rehearsal on a machine like this one
#
# The machine (ENVIRONMENT.md, "The GPU machine, as lent now") has torch, transformers, peft,
# sentence-transformers, safetensors, typer, rich, httpx, prometheus-client, numpy, pytest
# and no network; at most 64 MiB travels to it per run. The wheels are this checkout's own
# versions (from .venv), no dependencies resolved there: the list below is what the gpu
# tests and the benchmark import beyond that image. vLLM is not staged (279 MB; see
# docs/architecture.md, "On a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
stage=".device-stage"  # ignored by git; carried to the device machine
python_version="${STAGE_PYTHON:-3.12}"
limit_mib=55

packages=(
    pydantic pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv
    fastapi starlette annotated-doc uvicorn h11 anyio sniffio
    sqlalchemy alembic mako markupsafe obstore
    openai jiter httpx2 httpcore2 truststore idna typing-extensions pytest-timeout filelock
)

scripts/setup.sh  # the versions to stage are this checkout's
pins=()
for package in "${packages[@]}"; do
    version="$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$package")"
    pins+=("$package==$version")
done

rm -rf "$stage"
mkdir -p "$stage/wheels"
echo "downloading ${#pins[@]} wheels for CPython $python_version manylinux x86_64…" >&2
.venv/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --dest "$stage/wheels" "${pins[@]}"
# and Switchboard itself: the one import package, switchboard_lora, as a pure-Python wheel
.venv/bin/pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$stage/wheels" .

size_mib=$(( $(du -sk "$stage" | cut -f1) / 1024 ))
tree_mib=$(( $(git ls-files -z | du -ck --files0-from=- | tail -1 | cut -f1) / 1024 ))
echo "staged: $stage, $(ls "$stage/wheels" | wc -l) wheels, ${size_mib} MiB (working tree ${tree_mib} MiB)" >&2
if (( size_mib > limit_mib )); then
    echo "the staged folder is over ${limit_mib} MiB: it and the tree must travel in 64 MiB" >&2
    exit 1
fi

cat <<'EOF'
device command (the run tool; carry [".device-stage"]; timeout_s 480):
scripts/device-run.sh
EOF
