// Turns an errno from a file operation into an absl::Status whose code says what went wrong
// (missing, forbidden, out of space, other I/O failure).
#pragma once

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::model {

// "MESSAGE: strerror(err)" with a code chosen from `err`.
inline absl::Status ErrnoToStatus(int err, const std::string& message) {
  const std::string text = absl::StrCat(message, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR: return absl::NotFoundError(text);
    case EACCES:
    case EPERM:
    case EROFS: return absl::PermissionDeniedError(text);
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case ENOMEM: return absl::ResourceExhaustedError(text);
    default: return absl::UnavailableError(text);
  }
}

}  // namespace deltaserve::model
