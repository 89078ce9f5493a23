// Streams tensors into a .safetensors file through a bounded buffer and publishes it by rename.
#include "model/checkpoint/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <future>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/checkpoint/errno_status.h"
#include "nlohmann/json.hpp"

namespace deltaserve::model {
namespace {

using json = nlohmann::json;

constexpr uint64_t kChunkBytes = uint64_t{32} << 20;
// Smaller writes are not worth a thread.
constexpr size_t kMinAsyncWriteBytes = size_t{1} << 20;

absl::Status WriteAll(int fd, const std::string& path, const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat(path, ": write failed"));
    }
    if (written == 0) return absl::ResourceExhaustedError(absl::StrCat(path, ": write stalled"));
    bytes += written;
    size -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

// The header text (without its length prefix), space-padded to a multiple of 8.
absl::StatusOr<std::string> BuildHeader(const std::vector<TensorToWrite>& tensors,
                                        const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorToWrite& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name '", tensor.name, "' is not allowed in a safetensors file"));
    }
    if (!names.insert(tensor.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' given twice"));
    }
    DS_ASSIGN_OR_RETURN(const uint64_t bytes,
                        TensorDataBytes(tensor.name, tensor.dtype, tensor.shape));
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, bytes, &end)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name, "': data area size overflows"));
    }
    header[tensor.name] = {{"dtype", kernels::DTypeName(tensor.dtype)},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot encode header: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// Removes PATH.tmp unless the write got as far as the rename.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!published_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

  absl::Status Create() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return ErrnoToStatus(errno, absl::StrCat(path_, ": cannot create"));
    return absl::OkStatus();
  }

  // fsync before rename so a crash never leaves a complete-looking name over partial data.
  absl::Status Publish(const std::string& final_path) {
    if (::fsync(fd_) != 0) return ErrnoToStatus(errno, absl::StrCat(path_, ": fsync failed"));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoToStatus(errno, absl::StrCat(path_, ": close failed"));
    if (::rename(path_.c_str(), final_path.c_str()) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("cannot rename ", path_, " to ", final_path));
    }
    published_ = true;
    return absl::OkStatus();
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool published_ = false;
};

}  // namespace

absl::StatusOr<uint64_t> TensorDataBytes(const std::string& name, kernels::DType dtype,
                                         const std::vector<int64_t>& shape) {
  if (dtype != kernels::DType::kF32 && dtype != kernels::DType::kBF16 &&
      dtype != kernels::DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': dtype ",
                                                   kernels::DTypeName(dtype),
                                                   " cannot be written (F32, BF16, F16 only)"));
  }
  uint64_t bytes = kernels::DTypeSize(dtype);
  for (const int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': shape dimension ", dim, " is negative or overflows"));
    }
  }
  return bytes;
}

absl::StatusOr<uint64_t> SafetensorsHeaderBytes(
    const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata) {
  DS_ASSIGN_OR_RETURN(const std::string header, BuildHeader(tensors, metadata));
  return 8 + header.size();
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  TempFile temp(path + ".tmp");
  DS_RETURN_IF_ERROR(temp.Create());
  DS_RETURN_IF_ERROR(WriteAll(temp.fd(), temp.path(), contents.data(), contents.size()));
  return temp.Publish(path);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  auto header = BuildHeader(tensors, metadata);
  if (!header.ok()) {
    return absl::Status(header.status().code(),
                        absl::StrCat(path, ": ", header.status().message()));
  }
  uint64_t largest_tensor_bytes = 0;
  for (const TensorToWrite& tensor : tensors) {
    // Already validated by BuildHeader.
    const uint64_t bytes = *TensorDataBytes(tensor.name, tensor.dtype, tensor.shape);
    largest_tensor_bytes = std::max(largest_tensor_bytes, bytes);
    if (bytes > 0 && !tensor.fill) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", tensor.name, "' has no fill callback"));
    }
  }

  TempFile temp(path + ".tmp");
  DS_RETURN_IF_ERROR(temp.Create());
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(header->size() >> (8 * i));
  DS_RETURN_IF_ERROR(WriteAll(temp.fd(), temp.path(), prefix, sizeof(prefix)));
  DS_RETURN_IF_ERROR(WriteAll(temp.fd(), temp.path(), header->data(), header->size()));

  // Double buffering: one chunk is filled while the previous one is written.
  const size_t buffer_bytes = static_cast<size_t>(std::min(kChunkBytes, largest_tensor_bytes));
  std::vector<unsigned char> buffers[2] = {std::vector<unsigned char>(buffer_bytes),
                                           std::vector<unsigned char>(buffer_bytes)};
  std::future<absl::Status> pending_write;  // destroyed (joined) before the buffers
  const auto finish_pending_write = [&pending_write]() {
    return pending_write.valid() ? pending_write.get() : absl::OkStatus();
  };
  int current = 0;
  for (const TensorToWrite& tensor : tensors) {
    const int64_t element_bytes = static_cast<int64_t>(kernels::DTypeSize(tensor.dtype));
    const int64_t total = static_cast<int64_t>(
        *TensorDataBytes(tensor.name, tensor.dtype, tensor.shape) / element_bytes);
    const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes) / element_bytes);
    for (int64_t first = 0; first < total; first += chunk) {
      const int64_t count = std::min(chunk, total - first);
      unsigned char* buffer = buffers[current].data();
      const absl::Status filled = tensor.fill(first, count, buffer);
      if (!filled.ok()) {
        return absl::Status(filled.code(), absl::StrCat(path, ": tensor '", tensor.name,
                                                        "': ", filled.message()));
      }
      DS_RETURN_IF_ERROR(finish_pending_write());
      const size_t size = static_cast<size_t>(count * element_bytes);
      if (size < kMinAsyncWriteBytes) {
        DS_RETURN_IF_ERROR(WriteAll(temp.fd(), temp.path(), buffer, size));
        continue;  // the buffer is free again
      }
      try {
        pending_write = std::async(std::launch::async, WriteAll, temp.fd(),
                                   std::cref(temp.path()), buffer, size);
      } catch (const std::system_error&) {  // no thread available: write inline
        DS_RETURN_IF_ERROR(WriteAll(temp.fd(), temp.path(), buffer, size));
      }
      current ^= 1;
    }
  }
  DS_RETURN_IF_ERROR(finish_pending_write());
  return temp.Publish(path);
}

}  // namespace deltaserve::model
