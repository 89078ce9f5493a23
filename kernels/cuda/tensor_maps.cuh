// Tensor maps (the copy engine's view of a matrix in global memory) of row-major bf16 matrices,
// read in 128-byte swizzled boxes by the kernels that move tiles with one instruction each
// (moe_grouped_wgmma.cu, mla_expanded_wgmma.cu).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace deltaserve::kernels::cuda {

// A tensor map of a bf16 [rows, cols] matrix whose rows are `row_stride` elements apart (data and
// rows 16-byte aligned), in boxes of box_rows × 64 columns, 128-byte swizzled as
// SwizzledTileDescriptor reads them; false where the driver does not give one.
bool EncodeBf16TileMap(CUtensorMap* map, const void* data, int64_t rows, int64_t cols, int64_t row_stride,
                       int box_rows);

// The box at column `col` and row `row` of the matrix `map` describes, into shared memory,
// counted on `barrier`. Rows and columns past the matrix arrive as zeros (and count as bytes).
__device__ __forceinline__ void TileToShared(void* shared, const CUtensorMap* map, int col, int row,
                                             uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          static_cast<unsigned>(__cvta_generic_to_shared(shared))),
      "l"(map), "r"(col), "r"(row), "r"(static_cast<unsigned>(__cvta_generic_to_shared(barrier)))
      : "memory");
}

// Before the first copy through a map the host wrote to global memory: the tensor-map proxy reads
// it only after this.
__device__ __forceinline__ void AcquireTensorMap(const CUtensorMap* map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(map) : "memory");
}

}  // namespace deltaserve::kernels::cuda
