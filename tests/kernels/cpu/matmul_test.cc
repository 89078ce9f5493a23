#include "kernels/cpu/matmul.h"

#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "tests/testing/random_tensor.h"

namespace deltaserve::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::View;

// y = x · wᵀ in double, from fp32 weights.
std::vector<float> NaiveMatMul(const std::vector<float>& x, const std::vector<float>& w, int64_t t,
                               int64_t n, int64_t k) {
  std::vector<float> y(t * n);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t c = 0; c < k; ++c) acc += static_cast<double>(x[i * k + c]) * w[j * k + c];
      y[i * n + j] = static_cast<float>(acc);
    }
  }
  return y;
}

class MatMulShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(MatMulShapes, MatchesNaiveForEveryWeightDtype) {
  const auto [t, n, k] = GetParam();
  ThreadPool pool(3);
  std::vector<float> x = RandomVector(t * k, 1);
  std::vector<float> w = RandomVector(n * k, 2);
  // Round the weights to bf16 so all three storage types hold the same values.
  for (float& v : w) v = BF16ToF32(F32ToBF16(v));
  const std::vector<float> expected = NaiveMatMul(x, w, t, n, k);

  std::vector<uint16_t> bf16(w.size()), f16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    bf16[i] = F32ToBF16(w[i]);
    f16[i] = F32ToF16(w[i]);
  }
  std::vector<float> f16_values(w.size());
  for (size_t i = 0; i < w.size(); ++i) f16_values[i] = F16ToF32(f16[i]);
  const std::vector<float> expected_f16 = NaiveMatMul(x, f16_values, t, n, k);

  struct Case {
    TensorView weight;
    const std::vector<float>* expected;
  } cases[] = {{View(w, n, k), &expected},
               {MakeView(bf16.data(), DType::kBF16, n, k), &expected},
               {MakeView(f16.data(), DType::kF16, n, k), &expected_f16}};
  for (const Case& c : cases) {
    std::vector<float> y(t * n, NAN);
    MatMul(pool, View(x, t, k), c.weight, View(y, t, n));
    for (int64_t i = 0; i < t * n; ++i) {
      ASSERT_NEAR(y[i], (*c.expected)[i], 1e-4 * std::sqrt(static_cast<double>(k)) + 1e-5)
          << DTypeName(c.weight.dtype) << " at " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OddShapes, MatMulShapes,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(1, 65, 17),
                                           std::make_tuple(7, 64, 128), std::make_tuple(8, 63, 33),
                                           std::make_tuple(9, 130, 96), std::make_tuple(33, 200, 5)));

TEST(MatMul, RowResultDoesNotDependOnTheBatch) {
  ThreadPool pool(2);
  const int64_t k = 96, n = 150;
  std::vector<float> w = RandomVector(n * k, 3);
  std::vector<uint16_t> bf16 = testing::ToBF16(w);
  const TensorView weight = MakeView(bf16.data(), DType::kBF16, n, k);
  std::vector<float> x = RandomVector(37 * k, 4);
  std::vector<float> all(37 * n);
  MatMul(pool, View(x, 37, k), weight, View(all, 37, n));
  for (int64_t row : {0, 5, 8, 36}) {
    std::vector<float> alone_x(x.begin() + row * k, x.begin() + (row + 1) * k);
    std::vector<float> alone(n);
    MatMul(pool, View(alone_x, 1, k), weight, View(alone, 1, n));
    EXPECT_EQ(0, std::memcmp(alone.data(), all.data() + row * n, sizeof(float) * n)) << row;
  }
}

TEST(MatMul, WritesIntoStridedOutput) {
  ThreadPool pool(1);
  std::vector<float> x = RandomVector(3 * 4, 5), w = RandomVector(2 * 4, 6);
  std::vector<float> y(3 * 5, -1.0f);
  TensorView out{y.data(), DType::kF32, 3, 2, 5};
  MatMul(pool, View(x, 3, 4), View(w, 2, 4), out.Cols(0, 2));
  const std::vector<float> expected = NaiveMatMul(x, w, 3, 2, 4);
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(y[i * 5 + 0], expected[i * 2 + 0], 1e-5);
    EXPECT_NEAR(y[i * 5 + 1], expected[i * 2 + 1], 1e-5);
    EXPECT_EQ(y[i * 5 + 2], -1.0f);
  }
}

}  // namespace
}  // namespace deltaserve::kernels::cpu
