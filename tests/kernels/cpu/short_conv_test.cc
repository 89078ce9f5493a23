#include "kernels/cpu/short_conv.h"

#include <cmath>

#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

TEST(CausalConvSilu, MatchesZeroPaddedConvolutionAndContinues) {
  ThreadPool pool(2);
  const int64_t channels = 300, kernel = 4, t = 9;
  std::vector<float> x = RandomVector(t * channels, 1);
  std::vector<uint16_t> weight = testing::ToBF16(RandomVector(channels * kernel, 2));
  const TensorView w = MakeView(weight.data(), DType::kBF16, channels, kernel);

  std::vector<float> tail((kernel - 1) * channels, 0.0f);
  std::vector<float> whole(t * channels, NAN);
  const ConvSequence seq{{0, t}, tail.data()};
  CausalConvSilu(pool, View(x, t, channels), w, {&seq, 1}, View(whole, t, channels));
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t c = 0; c < channels; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < kernel; ++j) {
        const int64_t src = i - (kernel - 1) + j;
        if (src >= 0) acc += BF16ToF32(weight[c * kernel + j]) * x[src * channels + c];
      }
      ASSERT_NEAR(whole[i * channels + c], acc / (1 + std::exp(-acc)), 1e-5);
    }
  }
  // The tail now holds the last kernel-1 inputs.
  for (int64_t i = 0; i < kernel - 1; ++i) {
    for (int64_t c = 0; c < channels; ++c) ASSERT_EQ(tail[i * channels + c], x[(t - kernel + 1 + i) * channels + c]);
  }

  // Token by token (and a first piece shorter than the kernel) gives the same outputs.
  std::vector<float> step_tail((kernel - 1) * channels, 0.0f);
  std::vector<float> stepped(t * channels, NAN);
  const int64_t pieces[][2] = {{0, 2}, {2, 1}, {3, 6}};
  for (const auto& piece : pieces) {
    const ConvSequence part{{piece[0], piece[1]}, step_tail.data()};
    CausalConvSilu(pool, View(x, t, channels), w, {&part, 1}, View(stepped, t, channels));
  }
  EXPECT_EQ(stepped, whole);
  EXPECT_EQ(step_tail, tail);
}

}  // namespace
}  // namespace deltaserve::kernels::cpu
