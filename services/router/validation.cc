#include "services/router/validation.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace deltaserve::services {

std::string NewSessionId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("s-%016x%016x", rng(), rng());
}

absl::Status ValidateSessionId(const std::string& session_id) {
  if (session_id.empty() || session_id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat("session_id must be 1 to 128 characters, got ",
                                                   session_id.size()));
  }
  for (char c : session_id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("session_id '", session_id, "' may only use letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RouterRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                      const std::string& tenant,
                                                      const RouterConfig& config,
                                                      const model::KimiLinearConfig& model,
                                                      int64_t max_context) {
  RouterRequest out;
  out.tenant = tenant;
  if (request.token_ids_size() == 0) {
    return absl::InvalidArgumentError("token_ids must hold at least one token");
  }
  if (request.token_ids_size() > config.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("token_ids holds ", request.token_ids_size(),
                                                   " tokens; the limit is ", config.max_prompt_tokens));
  }
  for (int i = 0; i < request.token_ids_size(); ++i) {
    const int32_t token = request.token_ids(i);
    if (token < 0 || token >= model.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "] = ", token,
                                                     " is outside the vocabulary [0, ",
                                                     model.vocab_size, ")"));
    }
  }
  out.prompt.assign(request.token_ids().begin(), request.token_ids().end());

  switch (request.session_mode()) {
    case v1::SESSION_MODE_UNSPECIFIED:
      if (!request.session_id().empty()) {
        return absl::InvalidArgumentError(
            "session_id is set but session_mode is unspecified: use SESSION_MODE_CONTINUE or "
            "SESSION_MODE_CREATE");
      }
      break;
    case v1::SESSION_MODE_CREATE:
      if (!request.session_id().empty()) {
        if (absl::Status status = ValidateSessionId(request.session_id()); !status.ok()) return status;
      }
      break;
    case v1::SESSION_MODE_CONTINUE:
      if (absl::Status status = ValidateSessionId(request.session_id()); !status.ok()) return status;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("session_mode ", request.session_mode(),
                                                     " is not a known mode"));
  }
  out.session_mode = request.session_mode();
  out.session_id = request.session_id();

  const v1::SamplingParams& s = request.sampling();
  model::SamplingParams& p = out.sampling;
  if (s.has_temperature()) p.temperature = s.temperature();
  if (s.has_top_k()) p.top_k = s.top_k();
  if (s.has_top_p()) p.top_p = s.top_p();
  if (s.has_min_p()) p.min_p = s.min_p();
  if (s.has_seed()) p.seed = s.seed();
  if (s.has_repetition_penalty()) p.repetition_penalty = s.repetition_penalty();
  if (s.has_frequency_penalty()) p.frequency_penalty = s.frequency_penalty();
  if (s.has_presence_penalty()) p.presence_penalty = s.presence_penalty();
  const v1::StoppingParams& stop = request.stopping();
  p.max_new_tokens = stop.has_max_new_tokens() ? stop.max_new_tokens() : config.default_max_new_tokens;
  if (p.max_new_tokens > config.max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be at most ",
                                                   config.max_new_tokens_limit, ", got ",
                                                   p.max_new_tokens));
  }
  if (stop.stop_token_ids_size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat("stop_token_ids holds ", stop.stop_token_ids_size(),
                                                   " ids; the limit is ", kMaxStopTokenIds));
  }
  p.stop_token_ids.assign(stop.stop_token_ids().begin(), stop.stop_token_ids().end());
  p.ignore_eos = stop.ignore_eos();
  if (absl::Status status = p.Validate(model.vocab_size); !status.ok()) return status;

  if (static_cast<int64_t>(out.prompt.size()) >= max_context) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt's ", out.prompt.size(),
                                                   " tokens leave no room in the model's context of ",
                                                   max_context));
  }
  if (request.priority() < kMinPriority || request.priority() > kMaxPriority) {
    return absl::InvalidArgumentError(absl::StrCat("priority must be in [", kMinPriority, ", ",
                                                   kMaxPriority, "], got ", request.priority()));
  }
  out.priority = request.priority();
  return out;
}

}  // namespace deltaserve::services
