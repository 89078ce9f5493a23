// Turns a public GenerateRequest into a validated RouterRequest before anything is queued:
// token ids in the vocabulary, sizes within limits, sampling values in range, a usable session
// id. Every failure is INVALID_ARGUMENT naming the field and value.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "deltaserve/v1/inference.pb.h"
#include "model/config/kimi_linear_config.h"
#include "model/sampling/sampling_params.h"
#include "services/router/router_config.h"

namespace deltaserve::services {

// Priorities a request may ask for (lower is served first).
inline constexpr int32_t kMinPriority = -100;
inline constexpr int32_t kMaxPriority = 100;
// Stop token ids one request may list.
inline constexpr int kMaxStopTokenIds = 64;

struct RouterRequest {
  std::string tenant;
  v1::SessionMode session_mode = v1::SESSION_MODE_UNSPECIFIED;
  std::string session_id;  // empty with SESSION_MODE_CREATE: the router assigns one
  std::vector<int32_t> prompt;
  model::SamplingParams sampling;
  int32_t priority = 0;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
};

absl::StatusOr<RouterRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                      const std::string& tenant,
                                                      const RouterConfig& config,
                                                      const model::KimiLinearConfig& model,
                                                      int64_t max_context);

// A fresh random session id ("s-" and 32 hex digits).
std::string NewSessionId();

// Session ids: 1 to 128 characters of [A-Za-z0-9._-].
absl::Status ValidateSessionId(const std::string& session_id);

}  // namespace deltaserve::services
