// Writes a .safetensors file tensor by tensor, chunk by chunk, from fill callbacks, so no more
// than one chunk is in memory; the file appears atomically (written to PATH.tmp, then renamed).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace deltaserve::model {

struct TensorToWrite {
  std::string name;
  kernels::DType dtype = kernels::DType::kBF16;  // F32, BF16 or F16
  std::vector<int64_t> shape;
  // Writes elements [first_element, first_element + num_elements) of the tensor, row-major and
  // little-endian, to `dst` (num_elements * DTypeSize(dtype) bytes, any alignment). Called in
  // increasing order of first_element, on the calling thread (while the previous chunk is written).
  std::function<absl::Status(int64_t first_element, int64_t num_elements, void* dst)> fill;
};

// Bytes a tensor occupies in the data area, or an error naming it (bad dtype, negative or
// overflowing shape).
absl::StatusOr<uint64_t> TensorDataBytes(const std::string& name, kernels::DType dtype,
                                         const std::vector<int64_t>& shape);

// Size of the header (8-byte length prefix included) that WriteSafetensors produces.
absl::StatusOr<uint64_t> SafetensorsHeaderBytes(const std::vector<TensorToWrite>& tensors,
                                                const std::map<std::string, std::string>& metadata);

// Writes `tensors` in order into `path`. The JSON header lists them (plus `__metadata__` when
// `metadata` is not empty) and is padded with spaces so the data area starts 8-byte aligned.
// I/O failures (a full disk included: RESOURCE_EXHAUSTED) name the file; PATH.tmp is removed.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {
                                  {"format", "pt"}});

// Writes `contents` to PATH.tmp, fsyncs it and renames it to `path`; errors name the file.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace deltaserve::model
