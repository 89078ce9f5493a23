// SequenceSampler: penalties, then greedy or temperature, truncation and the seeded draw.
#include "model/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/greedy.h"
#include "model/sampling/truncation.h"

namespace deltaserve::model {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Rejects NaN, +inf and all -inf logits; -inf alone is a legitimate mask.
absl::Status CheckLogits(std::span<const float> logits) {
  if (logits.empty()) return absl::InvalidArgumentError("Sample: logits are empty.");
  if (logits.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: ", logits.size(), " logits exceed the int32 token id range."));
  }
  bool any_finite = false;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    if (std::isnan(x) || x == std::numeric_limits<float>::infinity()) {
      return absl::InternalError(absl::StrCat("Sample: logit[", i, "] is ", x,
                                              "; expected a finite value or -inf."));
    }
    any_finite |= x != kNegInf;
  }
  if (!any_finite) {
    return absl::InternalError(
        absl::StrCat("Sample: all ", logits.size(), " logits are -inf; nothing to sample."));
  }
  return absl::OkStatus();
}

absl::Status CheckTokenId(int32_t token, size_t vocab_size) {
  if (token < 0 || static_cast<size_t>(token) >= vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("Sample: penalised token id ", token,
                                                   " is outside the logits [0, ", vocab_size,
                                                   ")."));
  }
  return absl::OkStatus();
}

}  // namespace

SequenceSampler::SequenceSampler(const SamplingParams& params, std::span<const int32_t> prompt,
                                 uint64_t fallback_seed)
    : params_(params), seed_(params.seed.value_or(fallback_seed)), rng_(seed_) {
  if (params_.repetition_penalty != 1.0f) seen_tokens_.insert(prompt.begin(), prompt.end());
}

void SequenceSampler::Accept(int32_t token) {
  if (params_.repetition_penalty != 1.0f) seen_tokens_.insert(token);
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    ++generated_counts_[token];
  }
}

bool SequenceSampler::IsStopToken(int32_t token, std::span<const int64_t> eos_ids) const {
  if (std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
      params_.stop_token_ids.end()) {
    return true;
  }
  return !params_.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();
}

absl::Status SequenceSampler::ApplyPenalties(std::span<float> logits) const {
  // Each token's update is independent of the others, so hash-set order does not matter.
  const float repetition = params_.repetition_penalty;
  for (const int32_t token : seen_tokens_) {
    DS_RETURN_IF_ERROR(CheckTokenId(token, logits.size()));
    float& x = logits[token];
    x = x > 0.0f ? x / repetition : x * repetition;
  }
  for (const auto& [token, count] : generated_counts_) {
    DS_RETURN_IF_ERROR(CheckTokenId(token, logits.size()));
    logits[token] -= params_.frequency_penalty * static_cast<float>(count) +
                     (count > 0 ? params_.presence_penalty : 0.0f);
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> TokenFromArgmax(int32_t argmax) {
  if (argmax < 0) {
    return absl::InternalError("Sample: the logits hold a NaN or +inf, or only -inf; nothing to sample.");
  }
  return argmax;
}

absl::StatusOr<int32_t> SequenceSampler::Sample(std::span<float> logits) {
  DS_RETURN_IF_ERROR(CheckLogits(logits));
  DS_RETURN_IF_ERROR(ApplyPenalties(logits));
  // The logits were finite or -inf before the penalties; none left (-1) means they overflowed.
  const int64_t best = kernels::GreedyArgmax(logits);
  if (best < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Sample: penalties (repetition_penalty=", params_.repetition_penalty,
        ") left no finite largest logit; nothing finite to sample."));
  }
  const auto top = static_cast<int32_t>(best);
  const float max_logit = logits[top];
  if (params_.greedy()) return top;

  if (params_.top_k > 0) ApplyTopK(params_.top_k, logits, scratch_);

  // Weights exp((x - max) / T), written over the logits: the largest is exactly 1, and (x - max)
  // is divided rather than x alone so a tiny temperature cannot overflow to inf - inf.
  const float temperature = params_.temperature;
  double total = 0.0;
  for (float& x : logits) {
    x = x == kNegInf ? 0.0f : std::exp((x - max_logit) / temperature);
    total += x;
  }

  if (params_.top_p < 1.0f) ApplyTopP(params_.top_p, total, logits, scratch_);
  if (params_.min_p > 0.0f) {
    // prob < min_p * max_prob  <=>  weight < min_p, since the largest weight is 1.
    for (float& w : logits) {
      if (w < params_.min_p) w = 0.0f;
    }
  }

  total = 0.0;
  for (const float w : logits) total += w;
  // The argmax always survives with weight 1, so total >= 1.
  const double u = rng_.NextUniform() * total;
  double cdf = 0.0;
  int32_t last_nonzero = top;
  for (int32_t i = 0; i < static_cast<int32_t>(logits.size()); ++i) {
    if (logits[i] == 0.0f) continue;
    cdf += logits[i];
    if (cdf > u) return i;
    last_nonzero = i;
  }
  return last_nonzero;  // Only reached when rounding leaves u at the very end of the CDF.
}

}  // namespace deltaserve::model
