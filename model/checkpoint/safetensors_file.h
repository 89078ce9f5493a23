// One .safetensors file, memory-mapped read-only, with its header parsed and validated:
// every tensor's dtype, shape and byte range are checked against the file before use.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace deltaserve::model {

struct TensorEntry {
  std::string name;
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // inside the mapping; any alignment
  uint64_t num_bytes = 0;
};

class SafetensorsFile {
 public:
  // Maps `path` and validates the header: length prefix within the file, JSON object, known
  // dtypes (F32, BF16, F16), offsets ordered, inside the data area, sized dtype x shape, and
  // not overlapping. Errors name the file and, where it applies, the tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace deltaserve::model
