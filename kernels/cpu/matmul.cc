#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/check.h"

namespace deltaserve::kernels::cpu {
namespace {

// Rows [row0, row0 + rows) of w as fp32 with stride K: in place when already F32.
const float* WeightPanel(TensorView w, int64_t row0, int64_t rows, std::vector<float>& scratch) {
  if (w.dtype == DType::kF32 && w.row_stride == w.cols &&
      reinterpret_cast<uintptr_t>(w.data) % alignof(float) == 0) {
    return w.row<float>(row0);
  }
  scratch.resize(static_cast<size_t>(rows * w.cols));
  for (int64_t r = 0; r < rows; ++r) {
    ConvertToF32(w.row<char>(row0 + r), w.dtype, scratch.data() + r * w.cols,
                 static_cast<size_t>(w.cols));
  }
  return scratch.data();
}

}  // namespace

void ConfigureBlasThreads() { openblas_set_num_threads(1); }

void MatMul(ThreadPool& pool, TensorView x, TensorView w, TensorView y) {
  DS_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32);
  DS_CHECK(x.cols == w.cols && y.rows == x.rows && y.cols == w.rows);
  const int64_t num_tokens = x.rows;
  const int64_t k = x.cols;
  const int64_t n = w.rows;
  if (num_tokens == 0 || n == 0) return;
  const int64_t num_panels = (n + kMatMulPanelRows - 1) / kMatMulPanelRows;

  pool.ParallelFor(num_panels, [&](int64_t panel) {
    thread_local std::vector<float> weight_scratch;
    thread_local std::vector<float> x_tile;
    thread_local std::vector<float> y_tile;
    const int64_t row0 = panel * kMatMulPanelRows;
    const int64_t panel_rows = std::min(kMatMulPanelRows, n - row0);
    const float* panel_data = WeightPanel(w, row0, panel_rows, weight_scratch);

    for (int64_t t0 = 0; t0 < num_tokens; t0 += kMatMulRowTile) {
      const int64_t rows = std::min(kMatMulRowTile, num_tokens - t0);
      if (rows == kMatMulRowTile) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kMatMulRowTile, panel_rows, k, 1.0f,
                    x.row<float>(t0), x.row_stride, panel_data, k, 0.0f,
                    y.row<float>(t0) + row0, y.row_stride);
        continue;
      }
      x_tile.assign(static_cast<size_t>(kMatMulRowTile * k), 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(x_tile.data() + r * k, x.row<float>(t0 + r), sizeof(float) * k);
      }
      y_tile.resize(static_cast<size_t>(kMatMulRowTile * panel_rows));
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kMatMulRowTile, panel_rows, k, 1.0f,
                  x_tile.data(), k, panel_data, k, 0.0f, y_tile.data(), panel_rows);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(y.row<float>(t0 + r) + row0, y_tile.data() + r * panel_rows,
                    sizeof(float) * panel_rows);
      }
    }
  });
}

}  // namespace deltaserve::kernels::cpu
