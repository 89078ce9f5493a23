// A model's weights: a directory (config.json plus either model.safetensors.index.json with its
// shards or a single model.safetensors, memory-mapped) or a random source whose tensors are
// generated in memory. Tensors are looked up by name with their expected shape; anything
// missing, misshapen, of a foreign dtype, or left unclaimed is an error naming file and tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint/generated_tensors.h"
#include "model/checkpoint/safetensors_file.h"
#include "model/config/kimi_linear_config.h"

namespace deltaserve::model {

struct CheckpointTensor {
  const TensorEntry* entry = nullptr;
  const std::string* file = nullptr;  // path of the shard holding it; the source for generated ones
};

// Tensor data points into the shards' mappings, or into generated memory, and lives as long as
// the Checkpoint (a generated tensor's until Release). Get marks tensors claimed, so a Checkpoint
// is used from one thread at a time.
class Checkpoint {
 public:
  // Opens a model source (model/config/model_source.h). A directory: parses config.json, then the
  // index (every listed shard must exist and hold exactly the tensors the index assigns to it)
  // or the single file. `random:<preset>[:<seed>]`: the checkpoint `init-model` would write for
  // them (the same config, names, shapes, dtypes, bytes and fingerprints), nothing generated yet.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& source);
  // The random checkpoint of `config` and `seed` (random_checkpoint.h), generated as Get claims
  // its tensors; `name` stands for it in errors and dir(). InvalidArgument for an invalid config.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenRandom(const KimiLinearConfig& config,
                                                                uint64_t seed, std::string name);

  // The directory, or the random source's name.
  const std::string& dir() const { return dir_; }
  const KimiLinearConfig& config() const { return config_; }
  bool is_generated() const { return generated_ != nullptr; }

  bool Has(const std::string& name) const;
  // Returns the tensor if its shape is `shape` and its dtype one of F32, BF16, F16; marks it
  // claimed. The error names the tensor, its file, and expected against actual. A generated
  // tensor's bytes are generated here (RESOURCE_EXHAUSTED when memory runs out).
  absl::StatusOr<CheckpointTensor> Get(const std::string& name, const std::vector<int64_t>& shape);
  // Every tensor by name, for callers that scan (the unexpected-tensor check, tools). A generated
  // tensor's entry has null data until Get.
  const std::map<std::string, CheckpointTensor>& tensors() const { return tensors_; }
  // Names of tensors never returned by Get, sorted.
  std::vector<std::string> Unclaimed() const;

  // Frees a generated tensor's bytes (a later Get generates them again); a memory-mapped tensor
  // is left alone (its pages are the page cache's to reclaim). Call it only when nothing reads
  // the bytes any more: after a backend that copies weights has adopted the tensor.
  void Release(const std::string& name);
  // Bytes of generated tensors held now (0 for a directory).
  uint64_t generated_bytes_held() const;

  // A stable digest of the weights: names, dtypes, shapes and a sample of every tensor's bytes.
  uint64_t WeightsFingerprint() const;
  // Identifies the model: the configuration's fingerprint mixed with the weights'. Every process
  // serving this checkpoint (whole, a pipeline stage, an expert shard) gets the same value.
  uint64_t ModelFingerprint() const;

 private:
  Checkpoint() = default;
  static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenDirectory(const std::string& dir);

  std::string dir_;
  KimiLinearConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unique_ptr<GeneratedTensors> generated_;  // set for a random source
  std::map<std::string, CheckpointTensor> tensors_;
  std::set<std::string> claimed_;
};

}  // namespace deltaserve::model
