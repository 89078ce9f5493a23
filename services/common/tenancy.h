// The tenant a call runs as: the `x-deltaserve-tenant` request metadata of the public API
// (proto/deltaserve/v1/inference.proto), validated before anything uses it as a key or label.
#pragma once

#include <grpcpp/server_context.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve::services {

// gRPC lower-cases metadata keys; clients may send any case.
inline constexpr char kTenantMetadataKey[] = "x-deltaserve-tenant";
// The tenant of a call without the metadata.
inline constexpr char kDefaultTenant[] = "default";
inline constexpr size_t kMaxTenantChars = 64;

// OK when `tenant` is 1..64 characters of [A-Za-z0-9._-] starting with a letter or digit, so it
// is safe as a path component (store disk tier), metric label and log field. INVALID_ARGUMENT
// naming the problem otherwise. Internal services check tenants carried in messages with this.
absl::Status ValidateTenant(std::string_view tenant);

// The call's tenant: the single `x-deltaserve-tenant` value, "default" when absent.
// INVALID_ARGUMENT when the value is invalid (see ValidateTenant) or given more than once.
absl::StatusOr<std::string> TenantOf(const grpc::ServerContext& context);

}  // namespace deltaserve::services
