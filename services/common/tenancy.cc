// Tenant extraction from call metadata and tenant id validation.
#include "services/common/tenancy.h"

#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace deltaserve::services {

absl::Status ValidateTenant(std::string_view tenant) {
  if (tenant.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tenant ('%s' metadata) is empty", kTenantMetadataKey));
  }
  if (tenant.size() > kMaxTenantChars) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tenant ('%s' metadata) has %d characters, at most %d allowed",
                        kTenantMetadataKey, tenant.size(), kMaxTenantChars));
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(tenant.front()))) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tenant ('%s' metadata) must start with a letter or digit", kTenantMetadataKey));
  }
  for (size_t i = 0; i < tenant.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(tenant[i]);
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
      // The offending byte is shown escaped: it may be anything the client sent.
      return absl::InvalidArgumentError(absl::StrFormat(
          "tenant ('%s' metadata) may hold only [A-Za-z0-9._-]; byte 0x%02x at offset %d is not "
          "allowed",
          kTenantMetadataKey, static_cast<int>(c), i));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TenantOf(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  const auto [begin, end] = metadata.equal_range(kTenantMetadataKey);
  if (begin == end) return std::string(kDefaultTenant);
  if (std::next(begin) != end) {
    return absl::InvalidArgumentError(
        absl::StrFormat("'%s' metadata given more than once", kTenantMetadataKey));
  }
  const std::string_view tenant(begin->second.data(), begin->second.size());
  if (absl::Status status = ValidateTenant(tenant); !status.ok()) return status;
  return std::string(tenant);
}

}  // namespace deltaserve::services
