#include "kernels/sampling.h"

#include <cmath>
#include <limits>

#include "kernels/greedy.h"
#include "kernels/truncation.h"

namespace deltaserve::kernels {

float PenalizedLogit(float logit, const LogitPenalty& penalty) {
  float x = logit > 0.0f ? logit / penalty.repetition : logit * penalty.repetition;
  const float frequency = penalty.frequency * static_cast<float>(penalty.count);
  const float presence = penalty.count > 0 ? penalty.presence : 0.0f;
  x -= frequency + presence;
  return x;
}

int64_t SampleRow(std::span<float> logits, const RowSampling& draw, std::vector<float>& scratch) {
  const int64_t best = GreedyArgmax(logits);
  return best < 0 ? -1 : SampleRowFrom(logits, best, draw, scratch);
}

int64_t SampleRowFrom(std::span<float> logits, int64_t best, const RowSampling& draw,
                      std::vector<float>& scratch) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  if (!(draw.temperature > 0.0f)) return best;  // greedy
  const float max_logit = logits[best];
  if (draw.top_k > 0) ApplyTopK(draw.top_k, logits, scratch);

  // Weights exp((x - max) / T), written over the logits: the largest is exactly 1, and (x - max)
  // is divided rather than x alone so a tiny temperature cannot overflow to inf - inf.
  double total = 0.0;
  for (float& x : logits) {
    x = x == kNegInf ? 0.0f : std::exp((x - max_logit) / draw.temperature);
    total += x;
  }
  if (draw.top_p < 1.0f) ApplyTopP(draw.top_p, total, logits, scratch);
  if (draw.min_p > 0.0f) {
    // prob < min_p * max_prob  <=>  weight < min_p, since the largest weight is 1.
    for (float& w : logits) {
      if (w < draw.min_p) w = 0.0f;
    }
  }

  total = 0.0;
  for (const float w : logits) total += w;
  // The argmax always survives with weight 1, so total >= 1.
  const double u = draw.uniform * total;
  double cdf = 0.0;
  int64_t last_nonzero = best;
  for (int64_t i = 0; i < static_cast<int64_t>(logits.size()); ++i) {
    if (logits[i] == 0.0f) continue;
    cdf += logits[i];
    if (cdf > u) return i;
    last_nonzero = i;
  }
  return last_nonzero;  // Only reached when rounding leaves u at the very end of the CDF.
}

}  // namespace deltaserve::kernels
