// Labels for session store messages, and the id checks every call makes.
#include "services/session_store/store_messages.h"

#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "services/common/tenancy.h"
#include "services/session_store/store_names.h"

namespace deltaserve::services {

std::string SessionLabel(std::string_view session_id) {
  return absl::StrFormat("session '%s'", session_id);
}

std::string PartLabel(std::string_view session_id, std::string_view part) {
  return absl::StrFormat("part '%s' of session '%s'", part, session_id);
}

absl::Status WithContext(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrFormat("%s: %s", context, status.message()));
}

absl::Status ValidateIds(std::string_view tenant, std::string_view session_id) {
  DS_RETURN_IF_ERROR(ValidateTenant(tenant));
  return ValidateSessionId(session_id);
}

absl::Status CheckPartSize(std::string_view where, int64_t bytes, int64_t max_part_bytes) {
  if (bytes <= max_part_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s has %d bytes, more than max_part_bytes %d", where, bytes, max_part_bytes));
}

}  // namespace deltaserve::services
