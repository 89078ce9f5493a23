#include "kernels/cpu/elementwise.h"

#include <atomic>
#include <cmath>

#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

TEST(RmsNorm, MatchesFormula) {
  ThreadPool pool(2);
  const int64_t t = 21, d = 37;
  std::vector<float> x = RandomVector(t * d, 1), w = RandomVector(d, 2);
  std::vector<uint16_t> w_bf16 = testing::ToBF16(w);
  std::vector<float> out(t * d);
  RmsNorm(pool, View(x, t, d), MakeView(w_bf16.data(), DType::kBF16, 1, d), 1e-5f, View(out, t, d));
  for (int64_t i = 0; i < t; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += x[i * d + c] * x[i * d + c];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int64_t c = 0; c < d; ++c) {
      ASSERT_NEAR(out[i * d + c], BF16ToF32(w_bf16[c]) * x[i * d + c] * inv, 1e-5);
    }
  }
}

TEST(GatedRmsNorm, NormalisesPerHeadAndGatesWithSigmoid) {
  ThreadPool pool(2);
  const int64_t t = 3, heads = 3, d = 10;
  std::vector<float> x = RandomVector(t * heads * d, 1), z = RandomVector(t * heads * d, 2);
  std::vector<float> w = RandomVector(d, 3), out(t * heads * d);
  GatedRmsNorm(pool, View(x, t, heads * d), View(z, t, heads * d), View(w, 1, d), d, 1e-5f,
               View(out, t, heads * d));
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += std::pow(x[i * heads * d + h * d + j], 2);
      const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
      for (int64_t j = 0; j < d; ++j) {
        const int64_t at = i * heads * d + h * d + j;
        ASSERT_NEAR(out[at], x[at] * inv * w[j] / (1 + std::exp(-z[at])), 1e-5);
      }
    }
  }
}

TEST(ThreadPool, RunsEveryIndexOnceIncludingNestedLoops) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(1000);
  pool.ParallelFor(100, [&](int64_t i) {
    pool.ParallelFor(10, [&](int64_t j) { hits[i * 10 + j].fetch_add(1); });
  });
  for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  std::vector<std::atomic<int>> blocked(37);
  pool.ParallelForBlocked(37, 8, [&](int64_t i) { blocked[i].fetch_add(1); });
  for (const auto& h : blocked) ASSERT_EQ(h.load(), 1);
}

}  // namespace
}  // namespace deltaserve::kernels::cpu
