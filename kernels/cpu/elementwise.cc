#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "base/check.h"

namespace deltaserve::kernels::cpu {
namespace {

// Rows per task: enough to amortise dispatch, few enough to spread over threads.
constexpr int64_t kRowsPerTask = 16;

template <typename Fn>
void ForEachRowBlock(ThreadPool& pool, int64_t rows, Fn&& fn) {
  pool.ParallelForBlocked(rows, kRowsPerTask, fn);
}

}  // namespace

float LoadAsF32(TensorView view, int64_t r, int64_t c) {
  float value;
  ConvertToF32(view.row<char>(r) + static_cast<size_t>(c) * DTypeSize(view.dtype), view.dtype,
               &value, 1);
  return value;
}

void LoadAllAsF32(TensorView view, float* dst) {
  for (int64_t r = 0; r < view.rows; ++r) {
    ConvertToF32(view.row<char>(r), view.dtype, dst + r * view.cols, static_cast<size_t>(view.cols));
  }
}

void Embed(ThreadPool& pool, std::span<const int32_t> ids, TensorView table, TensorView out) {
  DS_CHECK(out.dtype == DType::kF32 && static_cast<int64_t>(ids.size()) == out.rows);
  DS_CHECK(table.cols == out.cols);
  ForEachRowBlock(pool, out.rows, [&](int64_t t) {
    DS_CHECK(ids[t] >= 0 && ids[t] < table.rows);
    ConvertToF32(table.row<char>(ids[t]), table.dtype, out.row<float>(t),
                 static_cast<size_t>(out.cols));
  });
}

void Add(ThreadPool& pool, TensorView acc, TensorView x) {
  DS_CHECK(acc.rows == x.rows && acc.cols == x.cols);
  ForEachRowBlock(pool, acc.rows, [&](int64_t t) {
    float* a = acc.row<float>(t);
    const float* b = x.row<float>(t);
    for (int64_t c = 0; c < acc.cols; ++c) a[c] += b[c];
  });
}

void SwiGlu(ThreadPool& pool, TensorView gate, TensorView up, TensorView out) {
  DS_CHECK(gate.rows == up.rows && gate.cols == up.cols && out.rows == gate.rows &&
           out.cols == gate.cols);
  ForEachRowBlock(pool, out.rows, [&](int64_t t) {
    const float* g = gate.row<float>(t);
    const float* u = up.row<float>(t);
    float* o = out.row<float>(t);
    for (int64_t c = 0; c < out.cols; ++c) o[c] = Silu(g[c]) * u[c];
  });
}

void RmsNorm(ThreadPool& pool, TensorView x, TensorView weight, float eps, TensorView out) {
  DS_CHECK(x.rows == out.rows && x.cols == out.cols && weight.numel() == x.cols);
  std::vector<float> w(static_cast<size_t>(x.cols));
  LoadAllAsF32(weight, w.data());
  ForEachRowBlock(pool, x.rows, [&](int64_t t) {
    const float* in = x.row<float>(t);
    float* o = out.row<float>(t);
    double sum_squares = 0;
    for (int64_t c = 0; c < x.cols; ++c) sum_squares += static_cast<double>(in[c]) * in[c];
    const float inv_rms =
        1.0f / std::sqrt(static_cast<float>(sum_squares / static_cast<double>(x.cols)) + eps);
    for (int64_t c = 0; c < x.cols; ++c) o[c] = w[c] * (in[c] * inv_rms);
  });
}

void GatedRmsNorm(ThreadPool& pool, TensorView x, TensorView gate, TensorView weight,
                  int64_t head_dim, float eps, TensorView out) {
  DS_CHECK(x.cols % head_dim == 0 && weight.numel() == head_dim);
  DS_CHECK(gate.rows == x.rows && gate.cols == x.cols && out.rows == x.rows && out.cols == x.cols);
  std::vector<float> w(static_cast<size_t>(head_dim));
  LoadAllAsF32(weight, w.data());
  ForEachRowBlock(pool, x.rows, [&](int64_t t) {
    const float* in = x.row<float>(t);
    const float* z = gate.row<float>(t);
    float* o = out.row<float>(t);
    for (int64_t h0 = 0; h0 < x.cols; h0 += head_dim) {
      double sum_squares = 0;
      for (int64_t j = 0; j < head_dim; ++j) sum_squares += static_cast<double>(in[h0 + j]) * in[h0 + j];
      const float inv_rms =
          1.0f / std::sqrt(static_cast<float>(sum_squares / static_cast<double>(head_dim)) + eps);
      for (int64_t j = 0; j < head_dim; ++j) {
        o[h0 + j] = w[j] * (in[h0 + j] * inv_rms) * Sigmoid(z[h0 + j]);
      }
    }
  });
}

}  // namespace deltaserve::kernels::cpu
