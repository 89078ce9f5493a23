// Range checks for SamplingParams; messages follow vLLM's ("<field> must be ..., got <value>.").
#include "model/sampling/sampling_params.h"

#include <cmath>
#include <cstddef>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace deltaserve::model {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view rule, float value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", rule, ", got ", value, "."));
}

absl::Status CheckPenalty(absl::string_view field, float value) {
  if (!std::isfinite(value) || value < -2.0f || value > 2.0f) {
    return Invalid(field, "in [-2, 2]", value);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SamplingParams::Validate(int64_t vocab_size) const {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size must be positive, got ", vocab_size, "."));
  }
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return Invalid("temperature", "finite and non-negative", temperature);
  }
  if (top_k < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_k must be -1 or 0 (disabled), or at least 1, got ", top_k, "."));
  }
  // Written as !(in range) so that NaN fails too.
  if (!(top_p > 0.0f && top_p <= 1.0f)) return Invalid("top_p", "in (0, 1]", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return Invalid("min_p", "in [0, 1]", min_p);
  if (!std::isfinite(repetition_penalty) || repetition_penalty < kMinRepetitionPenalty) {
    return Invalid("repetition_penalty", absl::StrCat("finite and at least ", kMinRepetitionPenalty),
                   repetition_penalty);
  }
  if (absl::Status s = CheckPenalty("frequency_penalty", frequency_penalty); !s.ok()) return s;
  if (absl::Status s = CheckPenalty("presence_penalty", presence_penalty); !s.ok()) return s;
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    const int32_t id = stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids[", i, "] must be in [0, ",
                                                     vocab_size, "), got ", id, "."));
    }
  }
  if (max_new_tokens < 1 || max_new_tokens > kMaxNewTokensLimit) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be in [1, ",
                                                   kMaxNewTokensLimit, "], got ", max_new_tokens,
                                                   "."));
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::model
