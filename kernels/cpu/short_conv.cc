#include "kernels/cpu/short_conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/elementwise.h"

namespace deltaserve::kernels::cpu {
namespace {
constexpr int64_t kChannelsPerTask = 256;
}  // namespace

void CausalConvSilu(ThreadPool& pool, TensorView x, TensorView weight,
                    std::span<const ConvSequence> seqs, TensorView out) {
  const int64_t channels = x.cols;
  const int64_t kernel = weight.cols;
  DS_CHECK(weight.rows == channels && kernel >= 1 && out.rows == x.rows && out.cols == channels);
  const int64_t history = kernel - 1;
  std::vector<float> w(static_cast<size_t>(channels * kernel));
  LoadAllAsF32(weight, w.data());

  const int64_t channel_blocks = (channels + kChannelsPerTask - 1) / kChannelsPerTask;
  const int64_t num_seqs = static_cast<int64_t>(seqs.size());
  pool.ParallelFor(num_seqs * channel_blocks, [&](int64_t task) {
    const ConvSequence& seq = seqs[task / channel_blocks];
    const int64_t c0 = (task % channel_blocks) * kChannelsPerTask;
    const int64_t c1 = std::min(channels, c0 + kChannelsPerTask);
    const int64_t begin = seq.rows.begin;
    const int64_t length = seq.rows.length;
    // Input at relative position p (negative: from the tail), channel c.
    auto input = [&](int64_t p, int64_t c) -> float {
      return p >= 0 ? x.row<float>(begin + p)[c] : seq.tail[(history + p) * channels + c];
    };
    for (int64_t t = 0; t < length; ++t) {
      float* o = out.row<float>(begin + t);
      for (int64_t c = c0; c < c1; ++c) {
        float acc = 0.0f;
        for (int64_t j = 0; j < kernel; ++j) acc += w[c * kernel + j] * input(t - history + j, c);
        o[c] = Silu(acc);
      }
    }
    // New tail: the last `history` inputs of (old tail ++ this step's inputs).
    std::vector<float> fresh(static_cast<size_t>(history * (c1 - c0)));
    for (int64_t i = 0; i < history; ++i) {
      for (int64_t c = c0; c < c1; ++c) fresh[i * (c1 - c0) + (c - c0)] = input(length - history + i, c);
    }
    for (int64_t i = 0; i < history; ++i) {
      std::memcpy(seq.tail + i * channels + c0, fresh.data() + i * (c1 - c0), sizeof(float) * (c1 - c0));
    }
  });
}

}  // namespace deltaserve::kernels::cpu
