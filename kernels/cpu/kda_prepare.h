// The per-token, per-head inputs of the delta rule (spec §2.2 steps 4-6): log decay from the
// softplus gate, beta from its sigmoid, L2-normalised q (times 1/sqrt(d)) and k. Shared by the
// recurrent and the chunked algorithm so both see identical inputs.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace deltaserve::kernels::cpu {

class KdaPreparer {
 public:
  explicit KdaPreparer(const KdaInputs& in);

  // Fills q_hat, k_hat, v, g ([d] each) and *beta for batch row `t`, head `h`.
  void Prepare(int64_t t, int64_t h, float* q_hat, float* k_hat, float* v, float* g,
               float* beta) const;

  int64_t head_dim() const { return in_.head_dim; }

 private:
  const KdaInputs& in_;
  std::vector<float> decay_rate_;  // exp(A_log) per head
  std::vector<float> dt_bias_;     // per (head, channel)
};

// log(1 + exp(x)), linear above 20 as in FLA and transformers.
float Softplus(float x);

}  // namespace deltaserve::kernels::cpu
