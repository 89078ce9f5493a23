// SequenceSampler: penalties, then greedy or temperature, truncation and the seeded draw.
#include "model/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/greedy.h"
#include "kernels/sampling.h"

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

void SequenceSampler::Replay(int32_t token) {
  Accept(token);
  if (!params_.greedy()) rng_.Next();  // the one random number its draw took
}

bool SequenceSampler::IsStopToken(int32_t token, std::span<const int64_t> eos_ids) const {
  if (std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
      params_.stop_token_ids.end()) {
    return true;
  }
  return !params_.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();
}

std::vector<kernels::LogitPenalty> SequenceSampler::Penalties() const {
  std::vector<kernels::LogitPenalty> penalties;
  if (!params_.has_penalties()) return penalties;
  // Hash order: each token's update is independent of the others.
  std::unordered_map<int32_t, size_t> entry;
  for (const int32_t token : seen_tokens_) {
    entry[token] = penalties.size();
    penalties.push_back({0, token, 0, params_.repetition_penalty, params_.frequency_penalty, params_.presence_penalty});
  }
  for (const auto& [token, count] : generated_counts_) {
    if (const auto it = entry.find(token); it != entry.end()) {
      penalties[it->second].count = count;
    } else {
      penalties.push_back({0, token, count, 1.0f, params_.frequency_penalty, params_.presence_penalty});
    }
  }
  return penalties;
}

absl::Status SequenceSampler::ApplyPenalties(std::span<float> logits) const {
  for (const kernels::LogitPenalty& penalty : Penalties()) {
    DS_RETURN_IF_ERROR(CheckTokenId(penalty.token, logits.size()));
    logits[penalty.token] = kernels::PenalizedLogit(logits[penalty.token], penalty);
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> TokenFromDevice(int32_t token) {
  if (token < 0) {
    return absl::InternalError("Sample: the logits hold a NaN or +inf, or only -inf; nothing to sample.");
  }
  return token;
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
  if (params_.greedy()) return static_cast<int32_t>(best);
  return static_cast<int32_t>(kernels::SampleRowFrom(logits, best, Draw(), scratch_));
}

kernels::RowSampling SequenceSampler::Draw() {
  return {params_.temperature, params_.top_k, params_.top_p, params_.min_p, rng_.NextUniform()};
}

std::optional<kernels::RowSampling> SequenceSampler::DeviceDraw() {
  if (params_.greedy()) return std::nullopt;
  return Draw();
}

}  // namespace deltaserve::model
