// kernels::SampleRow against a reference written out here by sorting, and Backend::SampleRows'
// definition against SampleRow row by row.
#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace deltaserve::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The same rules by full sort: ids by (logit desc, id asc), the first top_k, weights, the
// shortest prefix reaching top_p of the mass, min_p, then the inverse CDF in id order.
int64_t SortedReference(const std::vector<float>& logits, const RowSampling& draw) {
  const int64_t n = static_cast<int64_t>(logits.size());
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), int64_t{0});
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const float max_logit = logits[ids[0]];
  const int64_t kept = draw.top_k > 0 ? std::min<int64_t>(draw.top_k, n) : n;
  std::vector<float> w(n, 0.0f);
  double total = 0.0;
  for (int64_t r = 0; r < kept; ++r) {
    const int64_t i = ids[r];
    w[i] = logits[i] == kNegInf ? 0.0f : std::exp((logits[i] - max_logit) / draw.temperature);
    total += w[i];
  }
  if (draw.top_p < 1.0f) {
    double mass = 0.0;
    bool reached = false;
    for (int64_t r = 0; r < kept; ++r) {
      const int64_t i = ids[r];
      if (reached) {
        w[i] = 0.0f;
      } else {
        mass += w[i];
        reached = mass >= draw.top_p * total;
      }
    }
  }
  for (float& x : w) {
    if (x < draw.min_p) x = 0.0f;
  }
  double sum = 0.0;
  for (const float x : w) sum += x;
  double cdf = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cdf += w[i];
    if (w[i] > 0.0f && cdf > draw.uniform * sum) return i;
  }
  return -2;
}

std::vector<float> RandomLogits(int64_t n, uint64_t seed, int levels) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(n);
  for (float& x : logits) x = levels > 0 ? static_cast<float>(rng() % levels) : normal(rng);
  return logits;
}

TEST(SampleRow, MatchesTheSortedReference) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  int checked = 0;
  for (const int64_t n : {1, 2, 9, 1000, 20000}) {
    for (const int levels : {0, 5}) {  // 5: many ties at every boundary
      const std::vector<float> logits = RandomLogits(n, n + levels, levels);
      for (const RowSampling shape : {RowSampling{1.0f, 0, 1.0f, 0.0f, 0}, RowSampling{0.7f, 1, 1.0f, 0.0f, 0},
                                      RowSampling{1.3f, 50, 1.0f, 0.0f, 0}, RowSampling{1.0f, 0, 0.9f, 0.0f, 0},
                                      RowSampling{0.8f, 300, 0.5f, 0.0f, 0}, RowSampling{1.0f, 0, 1.0f, 0.05f, 0},
                                      RowSampling{1.0f, 40, 0.95f, 0.02f, 0}}) {
        for (int d = 0; d < 20; ++d) {
          RowSampling draw = shape;
          draw.uniform = uniform(rng);
          std::vector<float> row = logits, scratch;
          ASSERT_EQ(SampleRow(row, draw, scratch), SortedReference(logits, draw))
              << "n " << n << " levels " << levels << " top_k " << draw.top_k << " top_p " << draw.top_p
              << " u " << draw.uniform;
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 5 * 2 * 7 * 20);
}

TEST(SampleRow, GreedyAtTemperatureZeroAndRejectsWhatGreedyRejects) {
  std::vector<float> scratch;
  std::vector<float> row = {1.0f, 3.0f, 3.0f, -2.0f};
  EXPECT_EQ(SampleRow(row, RowSampling{0.0f, 0, 1.0f, 0.0f, 0.99}, scratch), 1);
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> broken = {1.0f, bad, 0.0f};
    EXPECT_EQ(SampleRow(broken, RowSampling{}, scratch), -1);
  }
  std::vector<float> masked = {kNegInf, kNegInf};
  EXPECT_EQ(SampleRow(masked, RowSampling{}, scratch), -1);
}

TEST(BackendSampleRows, DrawsEachRowAsSampleRowDoes) {
  cpu::CpuBackend backend({.num_threads = 2});
  const int64_t rows = 4, n = 3000;
  std::vector<float> logits = RandomLogits(rows * n, 3, 0);
  logits[2 * n + 17] = std::numeric_limits<float>::quiet_NaN();  // row 2 is rejected
  const std::vector<RowSampling> draws = {
      {0.9f, 20, 0.8f, 0.0f, 0.31}, {1.0f, 0, 1.0f, 0.0f, 0.77}, {1.0f, 0, 1.0f, 0.0f, 0.5}, {0.0f, 0, 1.0f, 0.0f, 0.2}};
  std::vector<int32_t> ids(rows, 12345);
  backend.SampleRows(MakeView(logits.data(), DType::kF32, rows, n), draws, MakeView(ids.data(), DType::kI32, rows, 1));
  std::vector<float> scratch;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row(logits.begin() + r * n, logits.begin() + (r + 1) * n);
    EXPECT_EQ(ids[r], SampleRow(row, draws[r], scratch)) << r;
  }
  EXPECT_EQ(ids[2], -1);
}

}  // namespace
}  // namespace deltaserve::kernels
