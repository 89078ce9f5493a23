// ApplyTopK / ApplyTopP / NucleusBoundary against a brute-force full sort, with many ties.
#include "kernels/truncation.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace deltaserve::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Ids ordered by value descending, then id ascending: the order both truncations promise.
std::vector<int32_t> RankedIds(const std::vector<float>& values) {
  std::vector<int32_t> ids(values.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return values[a] > values[b]; });
  return ids;
}

// Small integers over 64: many ties, and every sum is exact in double.
std::vector<float> TiedValues(int size, int levels, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> values(size);
  for (float& v : values) v = static_cast<float>(rng() % levels) / 64.0f;
  return values;
}

TEST(TruncationTest, TopKMatchesFullSort) {
  for (const int vocab : {1, 2, 7, 65, 1000, 20000}) {
    for (const int k : {1, 2, 5, 64, 4096, 4097, 10000, vocab - 1, vocab, vocab + 3}) {
      if (k <= 0) continue;
      std::vector<float> logits = TiedValues(vocab, 9, vocab * 31 + k);
      for (int i = 0; i < vocab; i += 5) logits[i] = kNegInf;  // masked tokens
      std::vector<float> expected(vocab, kNegInf);
      const std::vector<int32_t> ranked = RankedIds(logits);
      for (int i = 0; i < std::min(k, vocab); ++i) expected[ranked[i]] = logits[ranked[i]];

      std::vector<float> scratch;
      ApplyTopK(k, logits, scratch);
      EXPECT_EQ(logits, expected) << "vocab " << vocab << " k " << k;
    }
  }
}

TEST(TruncationTest, TopPMatchesFullSort) {
  for (const int vocab : {1, 3, 64, 65, 1000, 50000}) {
    for (const int levels : {2, 40, 4000}) {
      for (const double top_p : {1e-6, 0.1, 0.5, 0.9, 0.999, 1.0}) {
        std::vector<float> weights = TiedValues(vocab, levels, vocab + levels);
        weights[vocab / 2] = 1.0f + static_cast<float>(levels) / 64.0f;  // total > 0
        const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
        std::vector<float> expected(vocab, 0.0f);
        double mass = 0.0;
        for (const int32_t id : RankedIds(weights)) {
          if (mass >= top_p * total) break;
          expected[id] = weights[id];
          mass += weights[id];
        }

        std::vector<float> scratch;
        ApplyTopP(top_p, total, weights, scratch);
        EXPECT_EQ(weights, expected) << "vocab " << vocab << " levels " << levels << " p "
                                     << top_p;
      }
    }
  }
}

TEST(TruncationTest, NucleusBoundaryIsTheSameWithAnyRoundBudget) {
  const std::vector<float> original = TiedValues(30000, 300, 17);
  std::vector<float> positive;
  for (float v : original) {
    if (v > 0.0f) positive.push_back(v);
  }
  const double total = std::accumulate(positive.begin(), positive.end(), 0.0);
  for (const double fraction : {1e-9, 0.25, 0.5, 0.99, 1.0}) {
    std::vector<float> values = positive;
    const float reference = NucleusBoundary(values, fraction * total, 1000);
    for (const int rounds : {0, 1, 2, 5, NucleusRoundBudget(positive.size())}) {
      values = positive;
      EXPECT_EQ(NucleusBoundary(values, fraction * total, rounds), reference)
          << "fraction " << fraction << " rounds " << rounds;
    }
  }
}

}  // namespace
}  // namespace deltaserve::kernels
