#!/usr/bin/env bash
# Installs the dependencies, builds everything and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./tools/build.sh
# Helm, the Kubernetes schema classes and the Dockerfile linter the deployment checks use (npm).
# Without them (no route to the npm registry) only the deployment checks fail, not the run.
./tools/deploy/install_tools.sh ||
  echo "test.sh: the deployment tools did not install (above): the deploy tests will fail" >&2
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
