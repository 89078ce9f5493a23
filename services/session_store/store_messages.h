// How the session store names what an error is about, and the id checks every call makes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace deltaserve::services {

// "session 'abc'".
std::string SessionLabel(std::string_view session_id);
// "part 'layers-0-13' of session 'abc'".
std::string PartLabel(std::string_view session_id, std::string_view part);
// Keeps the code, prefixes the message with `context`.
absl::Status WithContext(const absl::Status& status, std::string_view context);
// The tenant (services/common/tenancy.h rules) and the session id (store_names.h rules).
absl::Status ValidateIds(std::string_view tenant, std::string_view session_id);
// RESOURCE_EXHAUSTED when a part of `bytes` is over `max_part_bytes`; `where` is its PartLabel.
absl::Status CheckPartSize(std::string_view where, int64_t bytes, int64_t max_part_bytes);

}  // namespace deltaserve::services
