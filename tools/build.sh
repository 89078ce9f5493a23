#!/usr/bin/env bash
# Installs the dependencies (if missing), configures and builds into ./build.
# Environment: BUILD_DIR (default build), BUILD_TYPE (default Release), DELTASERVE_WERROR (OFF).
set -euo pipefail
cd "$(dirname "$0")/.."

./tools/install_deps.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DDELTASERVE_WERROR="${DELTASERVE_WERROR:-OFF}" >/dev/null
cmake --build "$build_dir" "$@"
