#include "services/router/router_config.h"

#include "absl/strings/str_cat.h"

namespace deltaserve::services {

absl::Status RouterConfig::Validate() const {
  auto positive = [](int64_t value, const char* name) -> absl::Status {
    if (value < 1) return absl::InvalidArgumentError(absl::StrCat(name, " must be at least 1, got ", value));
    return absl::OkStatus();
  };
  for (const auto& [value, name] :
       {std::pair<int64_t, const char*>{planner.max_step_tokens, "max_step_tokens"},
        {planner.max_prefill_chunk, "max_prefill_chunk"},
        {max_running, "max_running"},
        {max_waiting, "max_waiting"},
        {max_prompt_tokens, "max_prompt_tokens"},
        {max_new_tokens_limit, "max_new_tokens_limit"},
        {default_max_new_tokens, "default_max_new_tokens"},
        {session_transfer_threads, "session_transfer_threads"},
        {pipeline_steps, "pipeline_steps"}}) {
    if (absl::Status status = positive(value, name); !status.ok()) return status;
  }
  if (max_preemptions < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_preemptions must be at least 0, got ", max_preemptions));
  }
  if (planner.max_step_tokens < max_running) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_step_tokens (", planner.max_step_tokens, ") must be at least max_running (",
        max_running, "): every running sequence decodes one token per step"));
  }
  if (session_transfer_threads > kMaxSessionTransferThreads) {
    return absl::InvalidArgumentError(absl::StrCat("session_transfer_threads (", session_transfer_threads,
                                                   ") exceeds ", kMaxSessionTransferThreads));
  }
  if (pipeline_steps > kMaxPipelineSteps) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline_steps (", pipeline_steps, ") exceeds ",
                                                   kMaxPipelineSteps));
  }
  if (default_max_new_tokens > max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("default_max_new_tokens (", default_max_new_tokens,
                                                   ") exceeds max_new_tokens_limit (",
                                                   max_new_tokens_limit, ")"));
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::services
