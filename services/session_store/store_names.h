// Validation of session ids and part names, which become file names: a safe charset, bounded
// length, no leading '.'. Tenants are validated by services/common/tenancy.h (ValidateTenant).
#pragma once

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"

namespace deltaserve::services {

inline constexpr size_t kMaxSessionIdBytes = 128;
inline constexpr size_t kMaxPartNameBytes = 128;
// The longest tenant the disk format holds (ValidateTenant allows fewer).
inline constexpr size_t kMaxStoredTenantBytes = 256;

// Non-empty, at most kMaxSessionIdBytes, [A-Za-z0-9._-], not starting with '.'.
absl::Status ValidateSessionId(std::string_view session_id);
// Non-empty, at most kMaxPartNameBytes, [A-Za-z0-9._-], not starting with '.'.
absl::Status ValidatePartName(std::string_view part);

}  // namespace deltaserve::services
