// Row-wise and element-wise fp32 operations: embedding lookup, residual add, SwiGLU, RMSNorm,
// the KDA output's gated RMSNorm.
#pragma once

#include <cstdint>
#include <cmath>
#include <span>

#include "kernels/cpu/thread_pool.h"
#include "kernels/tensor.h"

namespace deltaserve::kernels::cpu {

// Element (r, c) of any-dtype `view` as fp32.
float LoadAsF32(TensorView view, int64_t r, int64_t c);
// All of a small tensor (a norm weight, a bias) as a contiguous fp32 vector.
void LoadAllAsF32(TensorView view, float* dst);

void Embed(ThreadPool& pool, std::span<const int32_t> ids, TensorView table, TensorView out);
void Add(ThreadPool& pool, TensorView acc, TensorView x);
void SwiGlu(ThreadPool& pool, TensorView gate, TensorView up, TensorView out);
void RmsNorm(ThreadPool& pool, TensorView x, TensorView weight, float eps, TensorView out);
void GatedRmsNorm(ThreadPool& pool, TensorView x, TensorView gate, TensorView weight,
                  int64_t head_dim, float eps, TensorView out);

inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float Silu(float x) { return x * Sigmoid(x); }

}  // namespace deltaserve::kernels::cpu
