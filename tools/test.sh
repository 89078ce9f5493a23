#!/usr/bin/env bash
# Installs the dependencies, builds everything and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./tools/build.sh
# Helm, the Kubernetes schema classes and the Dockerfile linter the deployment checks use (npm).
./tools/deploy/install_tools.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
