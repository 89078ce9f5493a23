// Random-checkpoint tensors generated on demand. Each lives in its own anonymous mapping, so
// releasing one returns its pages to the system at once rather than to the allocator.
#include "model/checkpoint/generated_tensors.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "model/checkpoint/errno_status.h"
#include "model/checkpoint/random_checkpoint.h"

namespace deltaserve::model {

GeneratedTensors::GeneratedTensors(const KimiLinearConfig& config, uint64_t seed, int threads)
    : seed_(seed),
      threads_(threads > 0 ? threads
                           : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))) {
  for (TensorSpec& spec : ExpectedTensorSpecs(config)) {
    TensorEntry entry;
    entry.name = spec.name;
    entry.dtype = spec.dtype;
    entry.shape = spec.shape;
    entry.num_bytes = kernels::DTypeSize(spec.dtype);
    for (const int64_t dim : spec.shape) entry.num_bytes *= static_cast<uint64_t>(dim);
    entries_.emplace(spec.name, std::move(entry));
    specs_.emplace(spec.name, std::move(spec));
  }
}

GeneratedTensors::~GeneratedTensors() {
  for (const auto& [name, entry] : entries_) {
    if (entry.data != nullptr) ::munmap(const_cast<void*>(entry.data), entry.num_bytes);
  }
}

absl::StatusOr<const TensorEntry*> GeneratedTensors::Hold(const std::string& name) {
  const auto it = entries_.find(name);
  DS_CHECK(it != entries_.end());
  TensorEntry& entry = it->second;
  if (entry.data != nullptr) return &entry;
  void* data = ::mmap(nullptr, entry.num_bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) {
    return ErrnoToStatus(errno, absl::StrCat("generating tensor '", name, "' (", entry.num_bytes,
                                             " bytes)"));
  }
  const TensorSpec& spec = specs_.at(name);
  const int64_t count =
      static_cast<int64_t>(entry.num_bytes / kernels::DTypeSize(spec.dtype));
  FillRandomTensorParallel(spec, seed_, threads_, 0, count, data);
  entry.data = data;
  held_bytes_ += entry.num_bytes;
  return &entry;
}

void GeneratedTensors::Release(const std::string& name) {
  const auto it = entries_.find(name);
  if (it == entries_.end() || it->second.data == nullptr) return;
  ::munmap(const_cast<void*>(it->second.data), it->second.num_bytes);
  it->second.data = nullptr;
  held_bytes_ -= it->second.num_bytes;
}

void GeneratedTensors::CopyBytes(const std::string& name, uint64_t offset, uint64_t size,
                                 void* dst) const {
  const TensorSpec& spec = specs_.at(name);
  DS_CHECK(offset + size <= entries_.at(name).num_bytes);
  if (size == 0) return;
  // The elements covering the byte range, generated into a scratch buffer.
  const uint64_t element_bytes = kernels::DTypeSize(spec.dtype);
  const uint64_t first = offset / element_bytes;
  const uint64_t end = (offset + size + element_bytes - 1) / element_bytes;
  std::vector<unsigned char> scratch((end - first) * element_bytes);
  FillRandomTensor(spec, seed_, static_cast<int64_t>(first), static_cast<int64_t>(end - first),
                   scratch.data());
  std::memcpy(dst, scratch.data() + (offset - first * element_bytes), size);
}

}  // namespace deltaserve::model
