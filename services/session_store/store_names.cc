// Validation of session ids and part names.
#include "services/session_store/store_names.h"

#include "absl/strings/str_format.h"

namespace deltaserve::services {
namespace {

bool IsSafeChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// A leading '.' is refused so that names never collide with temporary files, "." or "..".
absl::Status ValidateFileSafeName(const char* what, std::string_view name, size_t max_bytes) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty", what));
  if (name.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat("%s has %d bytes, more than the limit of %d",
                                                      what, name.size(), max_bytes));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsSafeChar(name[i]) || (i == 0 && name[i] == '.')) {
      // The byte is shown as a number: it may be anything the client sent.
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s may hold only [A-Za-z0-9._-] and may not start with '.'; byte 0x%02x at offset %d "
          "is not allowed",
          what, static_cast<unsigned char>(name[i]), i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSessionId(std::string_view session_id) {
  return ValidateFileSafeName("session id", session_id, kMaxSessionIdBytes);
}

absl::Status ValidatePartName(std::string_view part) {
  return ValidateFileSafeName("part name", part, kMaxPartNameBytes);
}

}  // namespace deltaserve::services
