// The chunked KDA form against the recurrent one, and the recurrent one against the closed-form
// update written out in double precision here.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

struct KdaCase {
  int64_t heads;
  int64_t d;
  std::vector<int64_t> lengths;
  float dt_bias_mean;  // larger: stronger decay
  uint64_t seed;
};

struct KdaData {
  int64_t t = 0;
  std::vector<float> q, k, v, f, b, a_log, dt_bias;
  KdaInputs inputs(int64_t heads, int64_t d) {
    const int64_t width = heads * d;
    return {heads, d, View(q, t, width), View(k, t, width), View(v, t, width), View(f, t, width),
            View(b, t, heads), View(a_log, 1, heads), View(dt_bias, 1, width)};
  }
};

KdaData MakeData(const KdaCase& c) {
  KdaData data;
  data.t = std::accumulate(c.lengths.begin(), c.lengths.end(), int64_t{0});
  const int64_t width = c.heads * c.d;
  data.q = RandomVector(data.t * width, c.seed + 1);
  data.k = RandomVector(data.t * width, c.seed + 2);
  data.v = RandomVector(data.t * width, c.seed + 3);
  data.f = RandomVector(data.t * width, c.seed + 4, 2.0f);
  data.b = RandomVector(data.t * c.heads, c.seed + 5);
  data.a_log = RandomVector(c.heads, c.seed + 6, 1.0f);
  for (float& a : data.a_log) a = std::log(1.0f + 15.0f * std::fabs(std::tanh(a)));
  data.dt_bias = RandomVector(width, c.seed + 7, 3.0f);
  for (float& x : data.dt_bias) x += c.dt_bias_mean;
  return data;
}

// Runs the batch with `algorithm`; states start from `initial` ([seqs][H*d*d]).
std::vector<float> RunKda(CpuBackend& backend, const KdaCase& c, KdaData& data, KdaAlgorithm algorithm,
                       std::vector<std::vector<float>>& states) {
  std::vector<KdaSequence> seqs;
  int64_t begin = 0;
  for (size_t i = 0; i < c.lengths.size(); ++i) {
    seqs.push_back({{begin, c.lengths[i]}, algorithm, states[i].data()});
    begin += c.lengths[i];
  }
  std::vector<float> out(data.t * c.heads * c.d, NAN);
  backend.KdaAttention(data.inputs(c.heads, c.d), seqs, View(out, data.t, c.heads * c.d));
  return out;
}

std::vector<std::vector<float>> InitialStates(const KdaCase& c, float scale) {
  std::vector<std::vector<float>> states;
  for (size_t i = 0; i < c.lengths.size(); ++i) {
    states.push_back(RandomVector(c.heads * c.d * c.d, c.seed + 100 + i, scale));
  }
  return states;
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Chunked and recurrent differ only by fp32 rounding: errors stay ~1e-6 of the output scale;
// 2e-5 leaves room for long sequences while catching any algebra slip (those are O(1)).
constexpr float kRelativeTolerance = 2e-5f;

void ExpectClose(const std::vector<float>& actual, const std::vector<float>& expected,
                 const char* what) {
  ASSERT_EQ(actual.size(), expected.size());
  const float scale = std::max(MaxAbs(expected), 1e-3f);
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_TRUE(std::isfinite(actual[i])) << what << " at " << i;
    ASSERT_NEAR(actual[i], expected[i], kRelativeTolerance * scale) << what << " at " << i;
  }
}

class KdaChunkedVsRecurrent : public ::testing::TestWithParam<KdaCase> {};

TEST_P(KdaChunkedVsRecurrent, OutputsAndStatesAgree) {
  const KdaCase& c = GetParam();
  CpuBackend backend({.num_threads = 3});
  KdaData data = MakeData(c);
  std::vector<std::vector<float>> chunk_states = InitialStates(c, 0.1f);
  std::vector<std::vector<float>> recurrent_states = chunk_states;
  const std::vector<float> chunked = RunKda(backend, c, data, KdaAlgorithm::kChunked, chunk_states);
  const std::vector<float> recurrent = RunKda(backend, c, data, KdaAlgorithm::kRecurrent, recurrent_states);
  ExpectClose(chunked, recurrent, "output");
  for (size_t i = 0; i < chunk_states.size(); ++i) ExpectClose(chunk_states[i], recurrent_states[i], "state");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, KdaChunkedVsRecurrent,
    ::testing::Values(KdaCase{2, 32, {1, 17, 63, 64, 65, 130, 200}, 0.0f, 10},
                      KdaCase{3, 24, {129, 5, 64}, -2.0f, 20},
                      KdaCase{1, 128, {300}, 0.0f, 30},
                      // Strong decay: g reaches about -200 per token, so a chunk's cumulative log
                      // decay is far below what exp(-G) could represent.
                      KdaCase{2, 32, {150, 64, 3}, 12.0f, 40}));

TEST(KdaChunked, ContinuationEqualsOnePass) {
  const KdaCase whole{2, 32, {150}, 0.0f, 50};
  CpuBackend backend({.num_threads = 2});
  KdaData data = MakeData(whole);
  std::vector<std::vector<float>> one_state = InitialStates(whole, 0.0f);
  const std::vector<float> one_pass = RunKda(backend, whole, data, KdaAlgorithm::kChunked, one_state);

  // Same tokens as two steps of 70 and 80, the second continuing from the first's state.
  std::vector<float> state(2 * 32 * 32, 0.0f);
  std::vector<float> out(150 * 64, NAN);
  const KdaInputs inputs = data.inputs(2, 32);
  const KdaSequence first{{0, 70}, KdaAlgorithm::kChunked, state.data()};
  backend.KdaAttention(inputs, {&first, 1}, View(out, 150, 64));
  const KdaSequence second{{70, 80}, KdaAlgorithm::kChunked, state.data()};
  backend.KdaAttention(inputs, {&second, 1}, View(out, 150, 64));
  ExpectClose(out, one_pass, "output");
  ExpectClose(state, one_state[0], "state");
}

// The closed form S_t = (I - β k kᵀ) Diag(exp(g)) S + β k vᵀ, o = Sᵀ q, in double, with the gate,
// beta and normalisation written out independently (spec §2.2).
TEST(KdaRecurrent, MatchesClosedFormInDouble) {
  const KdaCase c{2, 8, {12}, 1.0f, 60};
  CpuBackend backend({.num_threads = 1});
  KdaData data = MakeData(c);
  std::vector<std::vector<float>> states = InitialStates(c, 0.0f);
  const std::vector<float> actual = RunKda(backend, c, data, KdaAlgorithm::kRecurrent, states);

  const int64_t d = c.d, width = c.heads * c.d;
  for (int64_t h = 0; h < c.heads; ++h) {
    std::vector<double> s(d * d, 0.0);
    for (int64_t t = 0; t < data.t; ++t) {
      std::vector<double> q(d), k(d), v(d), g(d);
      double qn = 0, kn = 0;
      for (int64_t j = 0; j < d; ++j) {
        q[j] = data.q[t * width + h * d + j];
        k[j] = data.k[t * width + h * d + j];
        v[j] = data.v[t * width + h * d + j];
        qn += q[j] * q[j];
        kn += k[j] * k[j];
        const double x = data.f[t * width + h * d + j] + data.dt_bias[h * d + j];
        g[j] = -std::exp(static_cast<double>(data.a_log[h])) * (x > 20 ? x : std::log1p(std::exp(x)));
      }
      for (int64_t j = 0; j < d; ++j) {
        q[j] = q[j] / std::sqrt(qn + 1e-6) / std::sqrt(static_cast<double>(d));
        k[j] /= std::sqrt(kn + 1e-6);
      }
      const double beta = 1.0 / (1.0 + std::exp(-static_cast<double>(data.b[t * c.heads + h])));
      std::vector<double> decayed(d * d), next(d * d);
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t j = 0; j < d; ++j) decayed[i * d + j] = std::exp(g[i]) * s[i * d + j];
      }
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t j = 0; j < d; ++j) {
          double projected = 0;  // ((I - β k kᵀ) decayed)[i, j]
          for (int64_t m = 0; m < d; ++m) projected += ((i == m) - beta * k[i] * k[m]) * decayed[m * d + j];
          next[i * d + j] = projected + beta * k[i] * v[j];
        }
      }
      s = next;
      for (int64_t j = 0; j < d; ++j) {
        double o = 0;
        for (int64_t i = 0; i < d; ++i) o += s[i * d + j] * q[i];
        ASSERT_NEAR(actual[t * width + h * d + j], o, 1e-5) << "t=" << t << " h=" << h << " j=" << j;
      }
    }
  }
}

}  // namespace
}  // namespace deltaserve::kernels::cpu
