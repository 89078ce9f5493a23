// Validation of SnapshotStoreOptions.
#include "services/session_store/store_options.h"

#include "absl/strings/str_cat.h"

namespace deltaserve::services {

absl::Status SnapshotStoreOptions::Validate() const {
  if (memory_limit_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory_limit_bytes must be positive, got ", memory_limit_bytes));
  }
  if (max_part_bytes <= 0 || max_part_bytes > kMaxPartBytesLimit) {
    return absl::InvalidArgumentError(absl::StrCat("max_part_bytes must be in [1, ",
                                                   kMaxPartBytesLimit, "], got ", max_part_bytes));
  }
  if (data_dir.empty() && max_part_bytes > memory_limit_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("a memory-only store needs max_part_bytes (",
                                                   max_part_bytes, ") <= memory_limit_bytes (",
                                                   memory_limit_bytes, ")"));
  }
  if (max_disk_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_disk_bytes must be >= 0, got ", max_disk_bytes));
  }
  if (!data_dir.empty() && max_disk_bytes > 0 && max_part_bytes > max_disk_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_part_bytes (", max_part_bytes, ") exceeds max_disk_bytes (", max_disk_bytes, ")"));
  }
  if (max_sessions < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_sessions must be >= 0, got ", max_sessions));
  }
  constexpr int64_t kMaxTtlSeconds = int64_t{100} * 365 * 24 * 3600;  // keeps ms arithmetic exact
  if (ttl_seconds < 0 || ttl_seconds > kMaxTtlSeconds) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl_seconds must be in [0, ", kMaxTtlSeconds, "], got ", ttl_seconds));
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::services
