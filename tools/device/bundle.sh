#!/usr/bin/env bash
# Builds the GPU tests and benchmarks here (where gRPC, protobuf and friends are installed) and
# gathers them with the shared libraries they need into .device-bundle/, for a GPU host that has
# the NVIDIA driver, CUDA's cuBLAS (PyTorch's copy) and NCCL but none of our Debian packages.
# Usage: tools/device/bundle.sh [targets...]
set -euo pipefail
cd "$(dirname "$0")/../.."

if (($#)); then targets=("$@"); else targets=(kernels_cuda_test model_cuda_test); fi
build="build-gpu"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTASERVE_CUDA=ON >/dev/null
cmake --build "$build" --target "${targets[@]}"

bundle=.device-bundle
rm -rf "$bundle"
mkdir -p "$bundle/lib"
for target in "${targets[@]}"; do
  binary=$(find "$build" -type f -name "$target" -perm -u+x | head -n 1)
  cp "$binary" "$bundle/"
  strip "$bundle/$target"
  # Every non-system library it loads, except the CUDA ones the host provides.
  ldd "$binary" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) ;;
      libcublas*|libcudart*|libnccl*|libcuda.so*) ;;
      *) cp -L -n "$lib" "$bundle/lib/" ;;
    esac
  done
done
# The device tool carries at most 64 MiB; OpenBLAS alone is 35 MiB, so the bundle travels packed.
tar -cJf "$bundle.tar.xz" "$bundle"
du -sh "$bundle" "$bundle.tar.xz"
