# shellcheck shell=bash
# Sourced by the GPU-host scripts in tools/device: unpacks the bundle (bundle.sh) if needed and
# points the loader at its libraries, the host's cuBLAS (PyTorch's copy) and NCCL. Provides
# wait_healthy ADDRESS: waits up to 30 s for a deltaserve server to answer its health check.
bundle=.device-bundle
# A warm GPU host keeps the folder from an earlier call: unpack again whenever the carried tarball
# is not the one it came from, or its binaries would be stale.
if [[ -f $bundle.tar.xz ]]; then
  sum=$(sha256sum "$bundle.tar.xz" | cut -d' ' -f1)
  if [[ ! -d $bundle || "$(cat "$bundle/.tarball-sha256" 2>/dev/null)" != "$sum" ]]; then
    rm -rf "$bundle"
    tar -xJf "$bundle.tar.xz"
    echo "$sum" >"$bundle/.tarball-sha256"
  fi
fi
# Test binaries built in the base tree (bundle.sh --base) look for their fixtures under
# .base-tree/tests/data (an absolute path: the GPU host's copy sits where the build machine's
# checkout does, which is how the other test binaries find tests/data), and .base-tree does not
# travel: point it at this checkout's fixtures.
if [[ ! -e .base-tree/tests/data ]]; then
  mkdir -p .base-tree/tests && ln -sfn "$PWD/tests/data" .base-tree/tests/data
fi
cublas=$(dirname "$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -n 1)")
nccl=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib
export LD_LIBRARY_PATH="$bundle/lib:$cublas:$nccl:${LD_LIBRARY_PATH:-}"
ds=$bundle/deltaserve

wait_healthy() {
  for _ in $(seq 150); do
    "$ds" client health --server "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "no healthy server at $1" >&2
  return 1
}
