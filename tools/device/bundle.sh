#!/usr/bin/env bash
# Builds the GPU tests and benchmarks here (where gRPC, protobuf and friends are installed) and
# gathers them with the shared libraries they need into .device-bundle/, for a GPU host that has
# the NVIDIA driver, CUDA's cuBLAS (PyTorch's copy) and NCCL but none of our Debian packages.
# Usage: tools/device/bundle.sh [--base REV] [targets...]
#   --base REV  also builds the targets at commit REV (in the git worktree .base-tree/, build
#               folder build-base/) and adds them as <target>_base, for A/B runs of two
#               binaries side by side in one device call.
set -euo pipefail
cd "$(dirname "$0")/../.."

base=""
if [[ ${1:-} == --base ]]; then
  base=$(git rev-parse --verify "${2:?--base needs a commit}^{commit}")
  shift 2
fi
if (($#)); then targets=("$@"); else targets=(kernels_cuda_test model_cuda_test model_layers_cuda_test); fi

build_targets() {  # source folder, build folder
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTASERVE_CUDA=ON >/dev/null
  cmake --build "$2" --target "${targets[@]}"
}

bundle=.device-bundle
# Copies a built binary into the bundle as $2, with every non-system library it loads except the
# CUDA ones the host provides.
add_binary() {
  cp "$1" "$bundle/$2"
  strip "$bundle/$2"
  ldd "$1" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;;
      libcublas*|libcudart*|libnccl*|libcuda.so*) ;;
      *) cp -L -n "$lib" "$bundle/lib/" ;;
    esac
  done
}
find_binary() { find "$1/" -type f -name "$2" -perm -u+x | head -n 1; }  # "$1/": a linked folder too

build_targets . build-gpu
if [[ -n $base ]]; then
  tree=.base-tree
  if [[ -d $tree ]]; then
    git -C "$tree" checkout -q --detach "$base"
  else
    git worktree add -q --detach "$tree" "$base"
  fi
  build_targets "$tree" build-base
fi

rm -rf "$bundle"
mkdir -p "$bundle/lib"
for target in "${targets[@]}"; do
  add_binary "$(find_binary build-gpu "$target")" "$target"
  if [[ -n $base ]]; then add_binary "$(find_binary build-base "$target")" "${target}_base"; fi
done
# The device tool carries at most 64 MiB; OpenBLAS alone is 35 MiB, so the bundle travels packed.
tar -cJf "$bundle.tar.xz" "$bundle"
du -sh "$bundle" "$bundle.tar.xz"
