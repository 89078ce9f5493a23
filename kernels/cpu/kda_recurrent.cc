#include "kernels/cpu/kda_recurrent.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace deltaserve::kernels::cpu {

void KdaRecurrentHead(const KdaPreparer& prep, SequenceRows rows, int64_t h, float* state,
                      TensorView out) {
  const int64_t d = prep.head_dim();
  std::vector<float> q(d), k(d), v(d), g(d), memory(d), delta(d);
  float beta;
  for (int64_t t = rows.begin; t < rows.begin + rows.length; ++t) {
    prep.Prepare(t, h, q.data(), k.data(), v.data(), g.data(), &beta);
    // S ← Diag(exp(g)) S, then the prediction Sᵀk from the decayed state.
    for (int64_t i = 0; i < d; ++i) {
      const float decay = std::exp(g[i]);
      float* s_row = state + i * d;
      for (int64_t j = 0; j < d; ++j) s_row[j] *= decay;
    }
    std::fill(memory.begin(), memory.end(), 0.0f);
    for (int64_t i = 0; i < d; ++i) {
      const float* s_row = state + i * d;
      for (int64_t j = 0; j < d; ++j) memory[j] += s_row[j] * k[i];
    }
    for (int64_t j = 0; j < d; ++j) delta[j] = beta * (v[j] - memory[j]);
    // S += k ⊗ delta, then o = Sᵀq (the read includes this token).
    float* o = out.row<float>(t) + h * d;
    std::fill(o, o + d, 0.0f);
    for (int64_t i = 0; i < d; ++i) {
      float* s_row = state + i * d;
      for (int64_t j = 0; j < d; ++j) {
        s_row[j] += k[i] * delta[j];
        o[j] += s_row[j] * q[i];
      }
    }
  }
}

}  // namespace deltaserve::kernels::cpu
