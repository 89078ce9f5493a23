// POSIX file helpers for the disk tier: durable atomic writes (temp file, fsync, rename, fsync
// of the directory), bounded reads, and errno to absl::Status.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve::services {

// Temporary files start with this prefix; names the store writes never do.
inline constexpr char kTempFilePrefix[] = ".tmp-";

// ENOSPC/EDQUOT -> RESOURCE_EXHAUSTED, ENOENT -> NOT_FOUND, anything else -> INTERNAL.
absl::Status ErrnoError(int error_number, std::string_view what, std::string_view path);

// Writes the concatenation of `pieces` to `path` and fsyncs it (no rename).
absl::Status WriteFileDurably(const std::string& path, const std::vector<std::string_view>& pieces);
// Writes `dir`/`name` so that a reader (or a crash) sees the old file or the whole new one:
// `dir`/`temp_name` (which must start with kTempFilePrefix and be unique), fsync, rename over
// `name`, fsync `dir`.
absl::Status WriteFileAtomically(const std::string& dir, const std::string& name,
                                 const std::string& temp_name,
                                 const std::vector<std::string_view>& pieces);

// Reads up to `max_bytes` from `offset` of `path`; `*file_bytes` (if set) gets the file size.
absl::StatusOr<std::string> ReadFileRange(const std::string& path, uint64_t offset,
                                          uint64_t max_bytes, uint64_t* file_bytes);
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes);

absl::Status FsyncDir(const std::string& dir);
// mkdir that succeeds when the directory already exists.
absl::Status MakeDir(const std::string& dir);
absl::Status RenamePath(const std::string& from, const std::string& to);
// Removes `path` and everything below it; logs what it could not remove.
void RemoveTreeBestEffort(const std::string& path);

}  // namespace deltaserve::services
