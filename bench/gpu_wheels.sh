#!/usr/bin/env bash
# Download, here, the Python 3.12 x86-64 wheels falstudy needs on the bare GPU machine beyond what
# its image has (torch, numpy, pandas, pyarrow, pyyaml, typer, rich, tqdm, filelock, tokenizers,
# matplotlib are there; pydantic is not). `falstudy bench gpu` needs no duckdb, optuna or nnsight.
#
#   bench/gpu_wheels.sh [DEST]          # default .cache/gpu-wheels (git-ignored), under 64 MiB
#
# The versions are the ones this checkout is tested with (read from PYTHON's installed packages),
# so the device runs what the tests ran. On the device (docs/gpu.md gives the whole command):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
#       .cache/gpu-wheels/*.whl && export PYTHONPATH=$PWD:/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.cache/gpu-wheels}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
# pydantic and everything it requires (its Requires-Dist, less extras); typing_extensions travels
# too because pydantic needs a newer one than an image may hold (>= 4.16)
PACKAGES=(pydantic pydantic_core annotated-types typing-inspection typing_extensions)
LIMIT=$((64 * 1024 * 1024))

pins=$("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import sys
from importlib import metadata
try:
    print(" ".join(f"{name}=={metadata.version(name)}" for name in sys.argv[1:]))
except metadata.PackageNotFoundError as err:
    sys.exit(f"gpu_wheels.sh: {err.name} is not installed in {sys.executable}; set PYTHON to the project's venv")
PY
)
rm -rf "$DEST"
mkdir -p "$DEST"
# pip matches manylinux tags exactly: name the ones these packages are published under
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" $pins
count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
    echo "gpu_wheels.sh: expected ${#PACKAGES[@]} wheels in $DEST, found $count" >&2; exit 1
fi
size=$(du -sb "$DEST" | cut -f1)
if [ "$size" -gt "$LIMIT" ]; then
    echo "gpu_wheels.sh: $DEST holds $size bytes, over the device's 64 MiB a call" >&2; exit 1
fi
echo "$count wheels, $((size / 1024)) KiB in $DEST: $pins"
