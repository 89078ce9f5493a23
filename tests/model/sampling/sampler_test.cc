// SequenceSampler: greedy tie rule, seeding, distribution, truncation, penalties, errors, stops.
#include "model/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "model/sampling/rng.h"

namespace deltaserve::model {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatEq;
using ::testing::HasSubstr;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Samples once from a copy of `logits` (Sample overwrites its input).
int32_t Draw(SequenceSampler& sampler, const std::vector<float>& logits) {
  std::vector<float> scratch = logits;
  absl::StatusOr<int32_t> token = sampler.Sample(scratch);
  EXPECT_TRUE(token.ok()) << token.status();
  return token.ok() ? *token : -1;
}

std::vector<int> Histogram(SequenceSampler& sampler, const std::vector<float>& logits,
                           int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[Draw(sampler, logits)];
  return counts;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  double max = logits[0];
  for (float x : logits) max = std::max<double>(max, x);
  std::vector<double> p;
  double sum = 0.0;
  for (float x : logits) sum += p.emplace_back(std::exp((x - max) / temperature));
  for (double& v : p) v /= sum;
  return p;
}

// Each empirical frequency within 5 binomial standard deviations of its probability: a
// per-token failure chance below 1e-6, so the bound holds for any seed, not just this one.
void ExpectMatchesDistribution(const std::vector<int>& counts, const std::vector<double>& p,
                               int draws) {
  for (size_t i = 0; i < p.size(); ++i) {
    const double sigma = std::sqrt(p[i] * (1.0 - p[i]) / draws);
    EXPECT_NEAR(static_cast<double>(counts[i]) / draws, p[i], 5.0 * sigma + 1e-12)
        << "token " << i;
  }
}

SamplingParams Random(float temperature = 1.0f) {
  SamplingParams params;
  params.temperature = temperature;
  return params;
}

TEST(SequenceSamplerTest, GreedyTakesArgmaxWithLowestIdOnTies) {
  SamplingParams params;
  params.temperature = 0.0f;
  SequenceSampler sampler(params, {}, 1);
  EXPECT_EQ(Draw(sampler, {1.0f, 3.0f, 3.0f, 2.0f}), 1);
  EXPECT_EQ(Draw(sampler, {kNegInf, -5.0f, kNegInf, -7.0f}), 1);
  EXPECT_EQ(Draw(sampler, {0.5f, 0.5f, 0.5f}), 0);
}

TEST(SequenceSamplerTest, SameSeedSameTokensDifferentSeedsDiffer) {
  const std::vector<float> logits(100, 0.0f);
  auto run = [&](const SamplingParams& params, uint64_t fallback) {
    SequenceSampler sampler(params, {}, fallback);
    std::vector<int32_t> tokens;
    for (int i = 0; i < 64; ++i) tokens.push_back(Draw(sampler, logits));
    return tokens;
  };
  const SamplingParams unseeded = Random();
  EXPECT_EQ(run(unseeded, 5), run(unseeded, 5));
  EXPECT_NE(run(unseeded, 5), run(unseeded, 6));

  SamplingParams seeded = Random();
  seeded.seed = 1234;
  // params.seed wins over the fallback.
  EXPECT_EQ(run(seeded, 5), run(seeded, 6));
  EXPECT_EQ(SequenceSampler(seeded, {}, 5).seed(), 1234u);
  EXPECT_EQ(SequenceSampler(unseeded, {}, 5).seed(), 5u);
}

TEST(SequenceSamplerTest, ReplayedTokensLeaveTheStreamAndPenaltiesWhereSamplingThemDid) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 0.1f * static_cast<float>(i % 7);
  SamplingParams params = Random();
  params.seed = 77;
  params.frequency_penalty = 0.8f;
  params.presence_penalty = 0.3f;
  params.repetition_penalty = 1.2f;
  const std::vector<int32_t> prompt = {3, 4};
  for (const float temperature : {1.0f, 0.0f}) {
    SCOPED_TRACE(temperature);
    params.temperature = temperature;
    SequenceSampler uninterrupted(params, prompt, 1);
    std::vector<int32_t> first;
    for (int i = 0; i < 10; ++i) {
      first.push_back(Draw(uninterrupted, logits));
      uninterrupted.Accept(first.back());
    }
    SequenceSampler resumed(params, prompt, 2);
    for (const int32_t token : first) resumed.Replay(token);
    for (int i = 0; i < 10; ++i) {
      const int32_t token = Draw(uninterrupted, logits);
      EXPECT_EQ(Draw(resumed, logits), token) << "token " << i << " after the replay";
      uninterrupted.Accept(token);
      resumed.Accept(token);
    }
  }
}

TEST(SequenceSamplerTest, EmpiricalFrequenciesMatchSoftmaxOverTemperature) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, kNegInf};
  constexpr int kDraws = 20000;
  for (const float temperature : {0.7f, 1.0f, 2.5f}) {
    for (const uint64_t seed : {1u, 2u, 3u}) {
      SequenceSampler sampler(Random(temperature), {}, seed);
      const std::vector<int> counts = Histogram(sampler, logits, kDraws);
      EXPECT_EQ(counts[5], 0) << "a -inf token was drawn";
      ExpectMatchesDistribution(counts, Softmax(logits, temperature), kDraws);
    }
  }
}

TEST(SequenceSamplerTest, TemperatureNearZeroConcentratesOnArgmax) {
  SequenceSampler sampler(Random(1e-6f), {}, 9);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(Draw(sampler, {1.0f, 1.001f, 0.5f}), 1);
  // Far below the float range of logit / T: must still be finite and pick the argmax.
  SequenceSampler tiny(Random(1e-30f), {}, 9);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(Draw(tiny, {100.0f, -3.0f, 200.0f}), 2);
}

TEST(SequenceSamplerTest, TopKNeverLeavesTheKBest) {
  constexpr int kVocab = 1000;
  std::vector<float> logits(kVocab);
  Rng rng(3);
  for (float& x : logits) x = static_cast<float>(rng.NextUniform() * 4.0);
  std::vector<int32_t> ids(kVocab);
  for (int i = 0; i < kVocab; ++i) ids[i] = i;
  std::sort(ids.begin(), ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const std::set<int32_t> best(ids.begin(), ids.begin() + 10);

  SamplingParams params = Random(5.0f);  // high temperature flattens: outsiders would show
  params.top_k = 10;
  SequenceSampler sampler(params, {}, 11);
  std::set<int32_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(Draw(sampler, logits));
  EXPECT_EQ(seen, best);
}

TEST(SequenceSamplerTest, TopKTiesAtTheBoundaryKeepLowerIds) {
  SamplingParams params = Random();
  params.top_k = 2;
  SequenceSampler sampler(params, {}, 4);
  const std::vector<int> counts = Histogram(sampler, {0.0f, 1.0f, 1.0f, 1.0f, 1.0f}, 2000);
  EXPECT_THAT(counts, ElementsAre(0, testing::Gt(0), testing::Gt(0), 0, 0));
}

TEST(SequenceSamplerTest, TopPKeepsTheNucleusRenormalised) {
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f),
                                     std::log(0.3f)};
  SamplingParams params = Random();
  params.top_p = 0.75f;  // 0.5 < 0.75 <= 0.5 + 0.3: nucleus {1, 3}
  SequenceSampler sampler(params, {}, 21);
  constexpr int kDraws = 20000;
  const std::vector<int> counts = Histogram(sampler, logits, kDraws);
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[2], 0);
  ExpectMatchesDistribution(counts, {0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8}, kDraws);

  params.top_p = 1e-6f;  // always keeps at least the most likely token
  SequenceSampler tiny(params, {}, 21);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(Draw(tiny, logits), 1);
}

TEST(SequenceSamplerTest, TopPAfterTopKUsesTheTruncatedMass) {
  // Top-k = 2 leaves {0: 0.4, 1: 0.35} -> renormalised 0.533, 0.467; top_p 0.5 keeps token 0.
  const std::vector<float> logits = {std::log(0.4f), std::log(0.35f), std::log(0.25f)};
  SamplingParams params = Random();
  params.top_k = 2;
  params.top_p = 0.5f;
  SequenceSampler sampler(params, {}, 8);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(Draw(sampler, logits), 0);
}

TEST(SequenceSamplerTest, TopPOnALargeVocabStaysInsideTheNucleus) {
  // V = 163840 (Kimi Linear) exercises the chunked partial sort past its first chunks.
  constexpr int kVocab = 163840;
  std::vector<float> logits(kVocab);
  Rng rng(5);
  for (float& x : logits) x = static_cast<float>(rng.NextUniform());
  const std::vector<double> p = Softmax(logits, 1.0);
  std::vector<int32_t> ids(kVocab);
  for (int i = 0; i < kVocab; ++i) ids[i] = i;
  std::sort(ids.begin(), ids.end(), [&](int a, int b) { return p[a] > p[b]; });
  std::vector<bool> in_nucleus(kVocab, false);
  double mass = 0.0;
  for (int32_t id : ids) {
    in_nucleus[id] = true;
    mass += p[id];
    if (mass >= 0.3 + 1e-6) break;  // slack for float vs double rounding at the edge
  }
  SamplingParams params = Random();
  params.top_p = 0.3f;
  SequenceSampler sampler(params, {}, 77);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(in_nucleus[Draw(sampler, logits)]);
}

TEST(SequenceSamplerTest, MinPDropsTokensBelowTheScaledMax) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingParams params = Random();
  params.min_p = 0.2f;  // threshold 0.2 * 0.5 = 0.1: token 3 goes
  SequenceSampler sampler(params, {}, 13);
  constexpr int kDraws = 20000;
  const std::vector<int> counts = Histogram(sampler, logits, kDraws);
  EXPECT_EQ(counts[3], 0);
  ExpectMatchesDistribution(counts, {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0}, kDraws);

  params.min_p = 1.0f;  // only the most likely token is left
  SequenceSampler strict(params, {}, 13);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(Draw(strict, logits), 0);
}

// Repetition penalty 2 over the prompt {0, 1, 0} and what was generated, frequency 0.5 and
// presence 0.25 over the generated {2, 2, 1}.
SequenceSampler HandComputedPenaltySampler() {
  SamplingParams params;
  params.repetition_penalty = 2.0f;
  params.frequency_penalty = 0.5f;
  params.presence_penalty = 0.25f;
  const std::vector<int32_t> prompt = {0, 1, 0};
  SequenceSampler sampler(params, prompt, 1);
  for (int32_t token : {2, 2, 1}) sampler.Accept(token);
  return sampler;
}

TEST(SequenceSamplerTest, PenaltiesMatchAHandComputedCase) {
  const SequenceSampler sampler = HandComputedPenaltySampler();
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 4.0f, -1.0f};
  ASSERT_TRUE(sampler.ApplyPenalties(logits).ok());
  // 0: prompt only -> 2 / 2. 1: prompt + once generated -> -2 * 2 - 0.5 - 0.25.
  // 2: generated twice -> 1 / 2 - 2 * 0.5 - 0.25. 3, 4: untouched.
  EXPECT_THAT(logits, ElementsAre(FloatEq(1.0f), FloatEq(-4.75f), FloatEq(-0.75f), FloatEq(4.0f),
                                  FloatEq(-1.0f)));
}

TEST(SequenceSamplerTest, PenaltiesApplyBeforeGreedy) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.presence_penalty = 2.0f;
  SequenceSampler sampler(params, {}, 1);
  const std::vector<float> logits = {1.0f, 2.5f, 0.0f};
  EXPECT_EQ(Draw(sampler, logits), 1);
  sampler.Accept(1);
  EXPECT_EQ(Draw(sampler, logits), 0);  // 2.5 - 2 < 1
}

TEST(SequenceSamplerTest, NonFiniteLogitsAreAnErrorNotACrash) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const float temperature : {0.0f, 1.0f}) {
    SequenceSampler sampler(Random(temperature), {}, 1);
    std::vector<float> with_nan = {0.0f, nan, 1.0f};
    EXPECT_THAT(sampler.Sample(with_nan).status().message(), HasSubstr("logit[1]"));
    std::vector<float> with_inf = {0.0f, 1.0f, inf};
    EXPECT_FALSE(sampler.Sample(with_inf).ok());
    std::vector<float> all_masked = {kNegInf, kNegInf};
    EXPECT_THAT(sampler.Sample(all_masked).status().message(), HasSubstr("-inf"));
    std::vector<float> empty;
    EXPECT_EQ(sampler.Sample(empty).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(SequenceSamplerTest, PenalisedTokenOutsideTheVocabIsAnError) {
  SamplingParams params;
  params.repetition_penalty = 1.5f;
  const std::vector<int32_t> prompt = {7};
  SequenceSampler sampler(params, prompt, 1);
  std::vector<float> logits = {0.0f, 1.0f};
  const absl::StatusOr<int32_t> token = sampler.Sample(logits);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(token.status().message(), HasSubstr("7"));
}

TEST(SequenceSamplerTest, IsStopTokenHonoursStopIdsAndIgnoreEos) {
  SamplingParams params;
  params.stop_token_ids = {5, 9};
  const std::vector<int64_t> eos = {2};
  SequenceSampler sampler(params, {}, 1);
  EXPECT_TRUE(sampler.IsStopToken(5, eos));
  EXPECT_TRUE(sampler.IsStopToken(9, eos));
  EXPECT_TRUE(sampler.IsStopToken(2, eos));
  EXPECT_FALSE(sampler.IsStopToken(3, eos));

  params.ignore_eos = true;
  SequenceSampler ignoring(params, {}, 1);
  EXPECT_TRUE(ignoring.IsStopToken(5, eos));
  EXPECT_FALSE(ignoring.IsStopToken(2, eos));
}

// DeviceDraw takes the random number Sample would take: the device's draw (SampleRow, its
// definition) gives Sample's tokens, with penalties too (applied first, as Penalties lists them).
// Greedy takes nothing (the device's argmax).
TEST(SequenceSamplerTest, DeviceDrawTakesTheNumberSampleWouldTake) {
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 6;
  params.top_p = 0.9f;
  params.min_p = 0.01f;
  params.seed = 21;
  std::vector<float> logits(40);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i)) * 2.0f;
  SequenceSampler host(params, {}, 0), device(params, {}, 0);
  std::vector<float> scratch;
  for (int i = 0; i < 50; ++i) {
    const std::optional<kernels::RowSampling> draw = device.DeviceDraw();
    ASSERT_TRUE(draw.has_value());
    EXPECT_EQ(draw->temperature, 0.8f);
    EXPECT_EQ(draw->top_k, 6);
    std::vector<float> row = logits;
    EXPECT_EQ(kernels::SampleRow(row, *draw, scratch), Draw(host, logits)) << i;
  }
  SamplingParams penalised = params;
  penalised.presence_penalty = 0.5f;
  penalised.repetition_penalty = 1.3f;
  const std::vector<int32_t> prompt = {3, 4, 5};
  SequenceSampler host_penalised(penalised, prompt, 0), device_penalised(penalised, prompt, 0);
  for (int i = 0; i < 30; ++i) {
    const std::optional<kernels::RowSampling> draw = device_penalised.DeviceDraw();
    ASSERT_TRUE(draw.has_value());
    std::vector<float> row = logits;
    for (const kernels::LogitPenalty& p : device_penalised.Penalties()) row[p.token] = kernels::PenalizedLogit(row[p.token], p);
    const int32_t token = Draw(host_penalised, logits);
    EXPECT_EQ(kernels::SampleRow(row, *draw, scratch), token) << i;
    host_penalised.Accept(token);
    device_penalised.Accept(token);
  }
  SamplingParams greedy = params;
  greedy.temperature = 0.0f;
  SequenceSampler greedy_sampler(greedy, {}, 0);
  EXPECT_FALSE(greedy_sampler.DeviceDraw().has_value());
}

// A device argmax stands for Sample's greedy pick only where Sample would pick at all.
TEST(TokenFromDeviceTest, KeepsAnIdAndRejectsWhatSampleRejects) {
  EXPECT_EQ(*TokenFromDevice(0), 0);
  EXPECT_EQ(*TokenFromDevice(163839), 163839);
  EXPECT_EQ(TokenFromDevice(-1).status().code(), absl::StatusCode::kInternal);
}

// Penalties lists one entry per penalised token: the prompt's and generated tokens with the
// repetition penalty, generated ones with their counts; applied one by one they give
// ApplyPenalties' logits.
TEST(SequenceSamplerTest, PenaltiesListWhatApplyPenaltiesApplies) {
  const SequenceSampler sampler = HandComputedPenaltySampler();
  std::vector<kernels::LogitPenalty> penalties = sampler.Penalties();
  std::sort(penalties.begin(), penalties.end(),
            [](const kernels::LogitPenalty& a, const kernels::LogitPenalty& b) { return a.token < b.token; });
  ASSERT_EQ(penalties.size(), 3u);
  EXPECT_EQ(penalties[0].token, 0);
  EXPECT_EQ(penalties[0].count, 0);
  EXPECT_EQ(penalties[1].token, 1);
  EXPECT_EQ(penalties[1].count, 1);
  EXPECT_EQ(penalties[2].token, 2);
  EXPECT_EQ(penalties[2].count, 2);
  for (const kernels::LogitPenalty& p : penalties) EXPECT_EQ(p.repetition, 2.0f);
  std::vector<float> listed = {2.0f, -2.0f, 1.0f, 4.0f, -1.0f}, applied = listed;
  for (const kernels::LogitPenalty& p : penalties) listed[p.token] = kernels::PenalizedLogit(listed[p.token], p);
  ASSERT_TRUE(sampler.ApplyPenalties(applied).ok());
  EXPECT_EQ(listed, applied);

  SamplingParams plain;
  const std::vector<int32_t> prompt = {0, 1, 0};
  SequenceSampler none(plain, prompt, 1);
  none.Accept(2);
  EXPECT_TRUE(none.Penalties().empty());
}

}  // namespace
}  // namespace deltaserve::model
