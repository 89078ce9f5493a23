// POSIX file helpers for the disk tier.
#include "services/session_store/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

// Closes a descriptor on every path out of a function.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now, reporting the error close() may carry for a file just written.
  absl::Status Close(std::string_view path) {
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoError(errno, "close", path);
    return absl::OkStatus();
  }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, std::string_view bytes, std::string_view path) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "write", path);
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ErrnoError(int error_number, std::string_view what, std::string_view path) {
  const std::string message =
      absl::StrFormat("%s '%s' failed: %s", what, path, std::strerror(error_number));
  switch (error_number) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status WriteFileDurably(const std::string& path,
                              const std::vector<std::string_view>& pieces) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoError(errno, "open", path);
  for (std::string_view piece : pieces) DS_RETURN_IF_ERROR(WriteAll(fd.get(), piece, path));
  if (::fsync(fd.get()) != 0) return ErrnoError(errno, "fsync", path);
  return fd.Close(path);
}

absl::Status WriteFileAtomically(const std::string& dir, const std::string& name,
                                 const std::string& temp_name,
                                 const std::vector<std::string_view>& pieces) {
  const std::string temp = absl::StrCat(dir, "/", temp_name);
  const std::string final_path = absl::StrCat(dir, "/", name);
  absl::Status status = WriteFileDurably(temp, pieces);
  if (status.ok()) status = RenamePath(temp, final_path);
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return FsyncDir(dir);
}

absl::StatusOr<std::string> ReadFileRange(const std::string& path, uint64_t offset,
                                          uint64_t max_bytes, uint64_t* file_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError(errno, "open", path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, "stat", path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (file_bytes != nullptr) *file_bytes = size;
  const uint64_t available = offset < size ? size - offset : 0;
  std::string out(static_cast<size_t>(std::min(available, max_bytes)), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        ::pread(fd.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "read", path);
    }
    if (n == 0) break;  // the file shrank under us; the caller's size checks catch it
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes) {
  uint64_t file_bytes = 0;
  DS_ASSIGN_OR_RETURN(std::string bytes, ReadFileRange(path, 0, max_bytes, &file_bytes));
  if (file_bytes > max_bytes) {
    return absl::DataLossError(absl::StrCat("'", path, "' has ", file_bytes,
                                            " bytes, more than the expected at most ", max_bytes));
  }
  return bytes;
}

absl::Status FsyncDir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError(errno, "open directory", dir);
  if (::fsync(fd.get()) != 0) return ErrnoError(errno, "fsync directory", dir);
  return absl::OkStatus();
}

absl::Status MakeDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0) return absl::OkStatus();
  if (errno == EEXIST) {
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("'", dir, "' exists and is no directory"));
  }
  return ErrnoError(errno, "mkdir", dir);
}

absl::Status RenamePath(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return ErrnoError(errno, "rename", absl::StrCat(from, "' to '", to));
  }
  return absl::OkStatus();
}

void RemoveTreeBestEffort(const std::string& path) {
  std::error_code error;
  std::filesystem::remove_all(path, error);
  if (error) spdlog::warn("session store: could not remove '{}': {}", path, error.message());
}

}  // namespace deltaserve::services
