#include "kernels/cpu/moe.h"

#include <cmath>

#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

float Logit(float p) { return std::log(p / (1.0f - p)); }

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed Route(std::vector<float> logits, std::vector<float> bias, const MoeRouting& routing) {
  ThreadPool pool(1);
  const int64_t experts = static_cast<int64_t>(bias.size());
  const int64_t t = static_cast<int64_t>(logits.size()) / experts;
  Routed r{std::vector<int32_t>(t * routing.top_k), std::vector<float>(t * routing.top_k)};
  MoeRoute(pool, View(logits, t, experts), View(bias, 1, experts), routing,
           MakeView(r.ids.data(), DType::kI32, t, routing.top_k), View(r.weights, t, routing.top_k));
  return r;
}

TEST(MoeRoute, BiasSteersSelectionButWeightsUseUnbiasedScores) {
  // Scores 0.9, 0.8, 0.3, 0.2; the bias lifts expert 3 over expert 1.
  const std::vector<float> logits = {Logit(0.9f), Logit(0.8f), Logit(0.3f), Logit(0.2f)};
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 0.7f};
  const MoeRouting routing{.top_k = 2, .renormalize = true, .scaling = 2.5f};
  const Routed r = Route(logits, bias, routing);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 3}));
  EXPECT_NEAR(r.weights[0], 0.9f / 1.1f * 2.5f, 1e-5);
  EXPECT_NEAR(r.weights[1], 0.2f / 1.1f * 2.5f, 1e-5);

  MoeRouting biased = routing;
  biased.biased_weights = true;
  const Routed rb = Route(logits, bias, biased);
  EXPECT_EQ(rb.ids, r.ids);
  EXPECT_NEAR(rb.weights[0], 0.9f / 1.8f * 2.5f, 1e-5);
  EXPECT_NEAR(rb.weights[1], 0.9f / 1.8f * 2.5f, 1e-5);
}

TEST(MoeRoute, WithoutRenormalizationWeightsAreScaledScores) {
  const Routed r = Route({Logit(0.6f), Logit(0.1f), Logit(0.7f)}, {0, 0, 0},
                         MoeRouting{.top_k = 2, .renormalize = false, .scaling = 2.0f});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 2}));
  EXPECT_NEAR(r.weights[0], 1.2f, 1e-5);
  EXPECT_NEAR(r.weights[1], 1.4f, 1e-5);
}

TEST(MoeRoute, GroupedTopKKeepsOnlyTheBestGroups) {
  // Groups {0,1}, {2,3}, {4,5}. Group scores (sum of both): 0.95+0.05=1.0, 0.6+0.6=1.2,
  // 0.55+0.5=1.05. With one group kept, expert 0 (the single best) is out.
  const std::vector<float> p = {0.95f, 0.05f, 0.6f, 0.6f, 0.55f, 0.5f};
  std::vector<float> logits;
  for (float x : p) logits.push_back(Logit(x));
  const Routed one = Route(logits, std::vector<float>(6, 0.0f),
                           MoeRouting{.top_k = 2, .num_groups = 3, .top_groups = 1, .scaling = 1.0f});
  EXPECT_EQ(one.ids, (std::vector<int32_t>{2, 3}));
  const Routed two = Route(logits, std::vector<float>(6, 0.0f),
                           MoeRouting{.top_k = 2, .num_groups = 3, .top_groups = 2, .scaling = 1.0f});
  EXPECT_EQ(two.ids, (std::vector<int32_t>{2, 3}));  // groups 1 and 2 kept; 0.6, 0.6 best
  const Routed three = Route(logits, std::vector<float>(6, 0.0f),
                             MoeRouting{.top_k = 2, .num_groups = 3, .top_groups = 3, .scaling = 1.0f});
  EXPECT_EQ(three.ids, (std::vector<int32_t>{0, 2}));
}

TEST(MoeExperts, SlotsAndCombineMatchPerTokenExperts) {
  ThreadPool pool(3);
  const int64_t t = 5, k = 2, hidden = 12, inner = 7, experts = 4;
  std::vector<float> x = RandomVector(t * hidden, 1);
  std::vector<std::vector<uint16_t>> w1, w3, w2;
  std::vector<ExpertWeights> weights;
  for (int64_t e = 0; e < experts; ++e) {
    w1.push_back(testing::ToBF16(RandomVector(inner * hidden, 10 + e)));
    w3.push_back(testing::ToBF16(RandomVector(inner * hidden, 20 + e)));
    w2.push_back(testing::ToBF16(RandomVector(hidden * inner, 30 + e)));
  }
  for (int64_t e = 0; e < experts; ++e) {
    weights.push_back({MakeView(w1[e].data(), DType::kBF16, inner, hidden),
                       MakeView(w3[e].data(), DType::kBF16, inner, hidden),
                       MakeView(w2[e].data(), DType::kBF16, hidden, inner)});
  }
  std::vector<int32_t> ids = {0, 3, 1, 2, 0, 1, 2, 3, 3, 0};
  std::vector<float> gates = {0.5f, 1.5f, 1.0f, 0.25f, 2.0f, 1.0f, 0.1f, 0.2f, 1.0f, 1.0f};
  std::vector<float> slots(t * k * hidden, NAN);
  // Two shards, as expert workers would run them.
  MoeExperts(pool, View(x, t, hidden), MakeView(ids.data(), DType::kI32, t, k),
             std::span<const ExpertWeights>(weights).subspan(0, 2), 0, View(slots, t * k, hidden));
  MoeExperts(pool, View(x, t, hidden), MakeView(ids.data(), DType::kI32, t, k),
             std::span<const ExpertWeights>(weights).subspan(2, 2), 2, View(slots, t * k, hidden));
  std::vector<float> out(t * hidden, 1.0f);
  MoeCombine(pool, View(slots, t * k, hidden), View(gates, t, k), View(out, t, hidden));

  for (int64_t tok = 0; tok < t; ++tok) {
    std::vector<double> expected(hidden, 1.0);
    for (int64_t s = 0; s < k; ++s) {
      const int64_t e = ids[tok * k + s];
      std::vector<double> act(inner);
      for (int64_t i = 0; i < inner; ++i) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < hidden; ++c) {
          g += BF16ToF32(w1[e][i * hidden + c]) * x[tok * hidden + c];
          u += BF16ToF32(w3[e][i * hidden + c]) * x[tok * hidden + c];
        }
        act[i] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t c = 0; c < hidden; ++c) {
        double y = 0;
        for (int64_t i = 0; i < inner; ++i) y += BF16ToF32(w2[e][c * inner + i]) * act[i];
        expected[c] += gates[tok * k + s] * y;
      }
    }
    for (int64_t c = 0; c < hidden; ++c) ASSERT_NEAR(out[tok * hidden + c], expected[c], 1e-3) << tok;
  }
}

}  // namespace
}  // namespace deltaserve::kernels::cpu
