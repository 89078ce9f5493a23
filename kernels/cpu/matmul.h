// y = x · wᵀ through OpenBLAS sgemm, with weights of any stored dtype converted panel by panel
// (so a BF16 checkpoint is used in place, never copied whole to fp32).
#pragma once

#include "kernels/cpu/thread_pool.h"
#include "kernels/tensor.h"

namespace deltaserve::kernels::cpu {

// Every sgemm call has exactly kMatMulRowTile rows (the last tile is zero-padded), so the BLAS
// takes the same code path, and a row's result is bit-identical whichever batch it sits in.
inline constexpr int64_t kMatMulRowTile = 8;
// Weight rows converted and multiplied per task.
inline constexpr int64_t kMatMulPanelRows = 64;

// x [T, K] F32, w [N, K] F32/BF16/F16, y [T, N] F32 (may be strided).
void MatMul(ThreadPool& pool, TensorView x, TensorView w, TensorView y);

// Makes OpenBLAS single-threaded: parallelism comes from our pool, one sgemm per task.
void ConfigureBlasThreads();

}  // namespace deltaserve::kernels::cpu
