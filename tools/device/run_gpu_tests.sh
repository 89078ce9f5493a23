#!/usr/bin/env bash
# Runs the bundled GPU tests on a GPU host (see bundle.sh).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source tools/device/device_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
for test in "$bundle"/*_test; do
  echo "== $test"
  "$test" --gtest_color=no "$@" || status=1
done
exit $status
