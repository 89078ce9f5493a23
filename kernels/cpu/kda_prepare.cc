#include "kernels/cpu/kda_prepare.h"

#include <cmath>

#include "base/check.h"
#include "kernels/cpu/elementwise.h"

namespace deltaserve::kernels::cpu {
namespace {

// x / sqrt(Σx² + 1e-6) (spec §2.2 step 6), times `scale`.
void L2Normalize(const float* x, int64_t n, float scale, float* out) {
  double sum_squares = 0;
  for (int64_t i = 0; i < n; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float norm = std::sqrt(static_cast<float>(sum_squares) + 1e-6f);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] / norm * scale;
}

}  // namespace

float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

KdaPreparer::KdaPreparer(const KdaInputs& in) : in_(in) {
  const int64_t width = in.num_heads * in.head_dim;
  DS_CHECK(in.q.cols == width && in.k.cols == width && in.v.cols == width);
  DS_CHECK(in.gate_logits.cols == width && in.beta_logits.cols == in.num_heads);
  DS_CHECK(in.a_log.numel() == in.num_heads && in.dt_bias.numel() == width);
  decay_rate_.resize(static_cast<size_t>(in.num_heads));
  LoadAllAsF32(in.a_log, decay_rate_.data());
  for (float& rate : decay_rate_) rate = std::exp(rate);
  dt_bias_.resize(static_cast<size_t>(width));
  LoadAllAsF32(in.dt_bias, dt_bias_.data());
}

void KdaPreparer::Prepare(int64_t t, int64_t h, float* q_hat, float* k_hat, float* v, float* g,
                          float* beta) const {
  const int64_t d = in_.head_dim;
  const int64_t c0 = h * d;
  L2Normalize(in_.q.row<float>(t) + c0, d, 1.0f / std::sqrt(static_cast<float>(d)), q_hat);
  L2Normalize(in_.k.row<float>(t) + c0, d, 1.0f, k_hat);
  const float* v_row = in_.v.row<float>(t) + c0;
  const float* f_row = in_.gate_logits.row<float>(t) + c0;
  for (int64_t j = 0; j < d; ++j) {
    v[j] = v_row[j];
    g[j] = -decay_rate_[h] * Softplus(f_row[j] + dt_bias_[c0 + j]);
  }
  *beta = Sigmoid(in_.beta_logits.row<float>(t)[h]);
}

}  // namespace deltaserve::kernels::cpu
