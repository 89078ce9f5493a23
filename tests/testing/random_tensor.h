// Seeded random host tensors for tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace deltaserve::testing {

inline std::vector<float> RandomVector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> values(n);
  for (float& v : values) v = normal(rng);
  return values;
}

// The values rounded to bf16, stored as raw bf16 bits.
inline std::vector<uint16_t> ToBF16(const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = kernels::F32ToBF16(values[i]);
  return bits;
}

// The values rounded to bf16 and widened back to floats (what a bf16 tensor of them holds).
inline std::vector<float> RoundedToBF16(std::vector<float> values) {
  for (float& v : values) v = kernels::BF16ToF32(kernels::F32ToBF16(v));
  return values;
}

inline kernels::TensorView View(std::vector<float>& values, int64_t rows, int64_t cols) {
  return kernels::MakeView(values.data(), kernels::DType::kF32, rows, cols);
}

}  // namespace deltaserve::testing
