// Little-endian byte writing and bounds-checked reading for the snapshot format.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deltaserve::model {

static_assert(std::endian::native == std::endian::little, "the snapshot format is little-endian");

class ByteWriter {
 public:
  template <typename T>
  void Put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    char raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));  // the host is little-endian (checked at build time)
    out_.append(raw, sizeof(T));
  }
  void PutBytes(const void* data, size_t n) {
    if (n > 0) out_.append(static_cast<const char*>(data), n);
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::string_view bytes) : bytes_(bytes) {}
  template <typename T>
  absl::Status Get(T* value, const char* what) {
    DS_RETURN_IF_ERROR(Need(sizeof(T), what));
    std::memcpy(value, bytes_.data() + offset_, sizeof(T));
    offset_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status GetBytes(void* data, size_t n, const char* what) {
    DS_RETURN_IF_ERROR(Need(n, what));
    if (n == 0) return absl::OkStatus();  // data may be null for an empty vector
    std::memcpy(data, bytes_.data() + offset_, n);
    offset_ += n;
    return absl::OkStatus();
  }
  size_t remaining() const { return bytes_.size() - offset_; }

 private:
  absl::Status Need(size_t n, const char* what) const {
    if (bytes_.size() - offset_ < n) {
      return absl::DataLossError(absl::StrCat("state snapshot is truncated in ", what));
    }
    return absl::OkStatus();
  }
  std::string_view bytes_;
  size_t offset_ = 0;
};

}  // namespace deltaserve::model
