// The tensors of a random checkpoint (random_checkpoint.h) held in memory instead of in shards:
// a tensor's bytes are generated, on several threads, when first asked for, and can be dropped
// again once a backend has copied them, so a checkpoint larger than the disk (or than memory,
// on a GPU) can still be loaded.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "model/checkpoint/safetensors_file.h"
#include "model/checkpoint/tensor_specs.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

// Not thread-safe: used from one thread at a time, like the Checkpoint that owns it.
class GeneratedTensors {
 public:
  // Precondition: config.Validate() is OK. `threads` 0: every hardware thread.
  GeneratedTensors(const KimiLinearConfig& config, uint64_t seed, int threads = 0);
  ~GeneratedTensors();
  GeneratedTensors(const GeneratedTensors&) = delete;
  GeneratedTensors& operator=(const GeneratedTensors&) = delete;

  // One entry per tensor of ExpectedTensorSpecs(config), by name. An entry's data is null while
  // its bytes are not held.
  const std::map<std::string, TensorEntry>& entries() const { return entries_; }

  // Generates the bytes of `name` unless they are held, and returns its entry, data set (page
  // aligned). RESOURCE_EXHAUSTED when memory runs out. Precondition: `name` is an entry.
  absl::StatusOr<const TensorEntry*> Hold(const std::string& name);
  // Frees the bytes of `name` if held; its entry's data becomes null.
  void Release(const std::string& name);
  // Bytes currently held, over all tensors.
  uint64_t held_bytes() const { return held_bytes_; }

  // Bytes [offset, offset + size) of tensor `name`'s encoding, generated for that range alone
  // (whether or not the tensor is held). Precondition: the range lies inside the tensor.
  void CopyBytes(const std::string& name, uint64_t offset, uint64_t size, void* dst) const;

 private:
  uint64_t seed_;
  int threads_;
  std::map<std::string, TensorSpec> specs_;
  std::map<std::string, TensorEntry> entries_;
  uint64_t held_bytes_ = 0;
};

}  // namespace deltaserve::model
