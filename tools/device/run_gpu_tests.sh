#!/usr/bin/env bash
# Runs the bundled GPU tests on a GPU host (see bundle.sh). Finds cuBLAS in the host's PyTorch.
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=.device-bundle
if [[ ! -d $bundle && -f $bundle.tar.xz ]]; then tar -xJf "$bundle.tar.xz"; fi
cublas=$(dirname "$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -n 1)")
nccl=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib
export LD_LIBRARY_PATH="$bundle/lib:$cublas:$nccl:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
for test in "$bundle"/*_test; do
  echo "== $test"
  "$test" --gtest_color=no "$@" || status=1
done
exit $status
