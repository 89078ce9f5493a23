// The operations Backend defines for every backend (kernels/backend.cc), through the CPU backend,
// which uses those definitions.
#include "kernels/backend.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace deltaserve::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The greedy token as SequenceSampler::Sample picks it: the largest logit, the lowest id on
// ties; -1 for logits it rejects (a NaN or +inf anywhere, or nothing but -inf).
TEST(BackendArgmaxRows, TakesTheLowestIdOfTheLargestAndRejectsWhatASamplerRejects) {
  cpu::CpuBackend cpu({.num_threads = 1});
  const int64_t cols = 6, stride = 8;
  std::vector<float> x = {
      1, 5, 2, 5, 0, 1,           0, 0,  // tie: 1
      -kInf, -kInf, -3, -kInf, -2, -kInf, 0, 0,  // masked: 4
      1, NAN, 2, 3, 0, 1,         0, 0,  // NaN: -1
      1, 2, kInf, 3, 0, 1,        0, 0,  // +inf: -1
      -kInf, -kInf, -kInf, -kInf, -kInf, -kInf, 9, 9,  // only -inf (the padding is not in the row)
      -1, -1, -1, -1, -1, -1,     0, 0,  // all equal: 0
  };
  const int64_t rows = static_cast<int64_t>(x.size()) / stride;
  std::vector<int32_t> ids(rows, 7);
  cpu.ArgmaxRows(TensorView{x.data(), DType::kF32, rows, cols, stride},
                 MakeView(ids.data(), DType::kI32, rows, 1));
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 4, -1, -1, -1, 0}));
}

// MatMuls as this definition runs it: each product as MatMul computes it, into its own output.
TEST(BackendMatMuls, GivesEachProductAsMatMulDoes) {
  cpu::CpuBackend cpu({.num_threads = 1});
  std::vector<float> x = {1, 2, 3, -1, 0, 2};                 // [2, 3]
  std::vector<float> w1 = {1, 0, 0, 0, 1, 1};                 // [2, 3]
  std::vector<float> x2 = {2, -2};                            // [1, 2]
  std::vector<float> w2 = {1, 1, 3, 0, 0.5f, -1};             // [3, 2]
  std::vector<float> y1(4, 9), y2(3, 9), want1(4), want2(3);
  const TensorView vx = MakeView(x.data(), DType::kF32, 2, 3), vw1 = MakeView(w1.data(), DType::kF32, 2, 3);
  const TensorView vx2 = MakeView(x2.data(), DType::kF32, 1, 2), vw2 = MakeView(w2.data(), DType::kF32, 3, 2);
  cpu.MatMul(vx, vw1, MakeView(want1.data(), DType::kF32, 2, 2));
  cpu.MatMul(vx2, vw2, MakeView(want2.data(), DType::kF32, 1, 3));
  const std::vector<MatMulProduct> products = {{vx, vw1, MakeView(y1.data(), DType::kF32, 2, 2)},
                                               {vx2, vw2, MakeView(y2.data(), DType::kF32, 1, 3)}};
  cpu.MatMuls(products);
  EXPECT_EQ(y1, want1);
  EXPECT_EQ(y2, want2);
  EXPECT_EQ(y1, (std::vector<float>{1, 5, -1, 2}));
  EXPECT_EQ(y2, (std::vector<float>{0, 6, 3}));
}

}  // namespace
}  // namespace deltaserve::kernels
